#!/usr/bin/env bash
# Benchmark `shoal download` against python3-libtorrent, aria2c (and rqbit
# when installed) on loopback: one big random file seeded by libtorrent,
# every client downloads it in turn, REPS interleaved rounds; then shoal ->
# shoal (a `shoal seed` of the same file). Prints per-run times, medians,
# ratios, peak RSS, and a PASS/MISS line per goal:
#   shoal <= 0.7 x libtorrent's time; shoal -> shoal 1 GiB in <= 2 s;
#   shoal's peak RSS <= 32 MiB.
#
# Usage: bench/download.sh
#   env: REPS=3 SIZE_MB=1024 DATA_DIR=/tmp/shoal-bench TIMEOUT=120 (per download;
#          default 120 s per GiB)
#        PIECE_KB=1024 (piece size in KiB, a power of two from 16 to 262144;
#          `shoal create` makes the torrent, or python3-libtorrent below 32 KiB,
#          which `shoal create` does not make)
#        CLIENTS="shoal libtorrent aria2c" (the leechers compared, in this order;
#          rqbit is added when installed and CLIENTS is not set)
#        LT_SEED=high_performance (lt.high_performance_seed(), so that the seed
#          is not what limits the leechers) or default (libtorrent's stock settings)
#        VERIFY=1 (cmp every download with the source, untimed)
#        SHOAL_BIN=path (a shoal binary to time instead of building this tree's)
#
# Rules (the same for every client):
# - Peers: every leecher in the comparison finds the seed through a local
#   `shoal tracker` (aria2c has no other way); the libtorrent seed announces
#   to it before anything is timed. DHT, LSD, PEX and uTP are off everywhere.
#   shoal -> shoal is a separate measurement: `shoal seed --no-trackers` and
#   `shoal download --no-trackers --peer` (no tracker involved).
# - CPU: user + system seconds of the client process and, for downloads
#   from the libtorrent seed, of the seed during the run (2 cores: the two
#   share them, so a client that costs its seed more CPU is slowed by it).
# - Time: wall time of the whole client process, from exec to exit (start-up,
#   tracker round trip, download, hash checks, shutdown; shoal also
#   fdatasyncs its data before exiting, the others leave it in the page
#   cache). Peak RSS from /usr/bin/time (%M). The client's own figure
#   ("seconds" in shoal's --json, add_torrent -> is_seeding for libtorrent)
#   is printed alongside.
# - Data: the source file is made once in DATA_DIR and kept (hot page cache);
#   each run downloads into a fresh, empty directory on the same filesystem,
#   deleted after the run. Every client checks each piece's SHA-1 (aria2c does
#   so for every BitTorrent piece received); VERIFY=1 also compares the result.
# - The libtorrent seed runs in seed_mode (no check up front; it hashes each
#   piece when first asked for it), so one untimed libtorrent download warms
#   it first. The same torrent (PIECE_KB pieces) for all.
# bench/download-scale.sh runs this at 1 GiB and 10 GiB and compares shoal's
# peak RSS.
set -euo pipefail
# Loopback runs: no DHT (its default routers are on the internet).
export SHOAL_NO_DHT=1

REPS=${REPS:-3}
SIZE_MB=${SIZE_MB:-1024}
DATA_DIR=${DATA_DIR:-/tmp/shoal-bench}
TIMEOUT=${TIMEOUT:-$(((SIZE_MB + 1023) / 1024 * 120))}
PIECE_KB=${PIECE_KB:-1024}
LT_SEED=${LT_SEED:-high_performance}
VERIFY=${VERIFY:-1}

GOAL_LT_RATIO=0.7
GOAL_S2S_SECONDS=2
GOAL_RSS_MIB=32

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=${SHOAL_BIN:-$ROOT/target/release/shoal}
HERE=$ROOT/bench/download
LTPY=/usr/bin/python3 # Debian's interpreter: the one with the libtorrent module

for tool in aria2c /usr/bin/time timeout cmp; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
"$LTPY" -c 'import libtorrent' 2>/dev/null ||
    { echo "error: $LTPY has no libtorrent module (apt-get install python3-libtorrent)" >&2; exit 1; }
HAVE_RQBIT=0
command -v rqbit >/dev/null && HAVE_RQBIT=1
CLIENTS_SET=${CLIENTS:+1}
if [ -n "$CLIENTS_SET" ]; then
    read -ra CLIENTS <<<"$CLIENTS"
    HAVE_RQBIT=0
    for c in "${CLIENTS[@]}"; do
        case $c in
        shoal | libtorrent | aria2c) ;;
        rqbit) HAVE_RQBIT=1 ;;
        *) echo "error: CLIENTS: unknown client '$c' (shoal libtorrent aria2c rqbit)" >&2; exit 1 ;;
        esac
    done
else
    CLIENTS=(shoal libtorrent aria2c)
    [ "$HAVE_RQBIT" = 1 ] && CLIENTS+=(rqbit)
fi
# Piece size: 2^PIECE_EXP bytes.
PIECE_EXP=$(awk -v k="$PIECE_KB" 'BEGIN { n = k * 1024; e = 0; while (n > 1 && n % 2 == 0) { n /= 2; e++ } print (n == 1 && e >= 14 && e <= 28) ? e : -1 }')
[ "$PIECE_EXP" -ge 0 ] || { echo "error: PIECE_KB=$PIECE_KB: a power of two from 16 to 262144" >&2; exit 1; }
if [ "$PIECE_KB" -ge 1024 ]; then PIECES="$((PIECE_KB / 1024)) MiB"; else PIECES="$PIECE_KB KiB"; fi

if [ -z "${SHOAL_BIN:-}" ]; then
    echo "== building shoal (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $("$SHOAL" --version), libtorrent $("$LTPY" -c 'import libtorrent; print(libtorrent.__version__)'), $(aria2c --version | head -n1)"

# --- the source file ------------------------------------------------------------

mkdir -p "$DATA_DIR"
FILE=$DATA_DIR/big-${SIZE_MB}M.bin
BYTES=$((SIZE_MB * 1024 * 1024))
if [ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" -ne "$BYTES" ]; then
    echo "== making a ${SIZE_MB} MiB random file: $FILE"
    head -c "$BYTES" /dev/urandom >"$FILE.tmp"
    mv "$FILE.tmp" "$FILE"
else
    echo "== reusing $FILE"
fi
cat "$FILE" >/dev/null # into the page cache

TMP=$(mktemp -d "$DATA_DIR/run.XXXXXX") # same filesystem as the source
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for FILE SED_EXPR PID WHAT : polls FILE until SED_EXPR prints something
# (echoed), for up to 60 s; fails if PID dies first.
wait_for() {
    local file=$1 expr=$2 pid=$3 what=$4 v
    for _ in $(seq 600); do
        v=$(sed -n "$expr" "$file" 2>/dev/null | head -n1)
        [ -n "$v" ] && { echo "$v"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: $what did not start:" >&2
    cat "$file" >&2
    exit 1
}

forget_pid() { # PID: drop it from the cleanup list
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

free_port() {
    "$LTPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- tracker, torrent, seeds -------------------------------------------------------

env -u RUST_LOG "$SHOAL" tracker --listen 127.0.0.1:0 2>"$TMP/tracker.log" &
TRACKER_PID=$!
PIDS+=("$TRACKER_PID")
TRACKER=$(wait_for "$TMP/tracker.log" 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$TRACKER_PID" "shoal tracker")
ANNOUNCE=http://$TRACKER/announce

if [ "$PIECE_EXP" -ge 15 ]; then
    "$SHOAL" create "$FILE" -l "$PIECE_EXP" -a "$ANNOUNCE" -o "$TMP/t.torrent" >"$TMP/create.log" 2>&1 ||
        { cat "$TMP/create.log" >&2; exit 1; }
else
    "$LTPY" "$HERE/lt_create.py" "$FILE" "$((PIECE_KB * 1024))" "$ANNOUNCE" "$TMP/t.torrent" >"$TMP/create.log" 2>&1 ||
        { cat "$TMP/create.log" >&2; exit 1; }
fi
NAME=$(basename "$FILE")
echo "== torrent: $(tail -n1 "$TMP/create.log" | sed 's/^[^:]*: //'), tracker $ANNOUNCE"

echo "== starting the libtorrent seed ($LT_SEED settings, seed_mode, announcing to the tracker)"
"$LTPY" "$HERE/lt_seed.py" "$TMP/t.torrent" "$DATA_DIR" "$LT_SEED" >"$TMP/lt-seed.log" 2>&1 &
LT_SEED_PID=$!
PIDS+=("$LT_SEED_PID")
LT_PORT=$(wait_for "$TMP/lt-seed.log" 's/^seeding \([0-9]*\)$/\1/p' "$LT_SEED_PID" "the libtorrent seed")
echo "   listening on 127.0.0.1:$LT_PORT"

echo "== starting the shoal seed (checks the data first; --no-trackers, for shoal -> shoal)"
env -u RUST_LOG "$SHOAL" seed "$TMP/t.torrent" "$FILE" --port 0 --bind 127.0.0.1 --no-trackers \
    2>"$TMP/shoal-seed.log" &
SHOAL_SEED_PID=$!
PIDS+=("$SHOAL_SEED_PID")
SHOAL_SEED=$(wait_for "$TMP/shoal-seed.log" 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$SHOAL_SEED_PID" "shoal seed")
echo "   listening on $SHOAL_SEED"

# --- one timed download --------------------------------------------------------------

# download CLIENT : one download into a fresh directory; appends the wall time
# to $TMP/CLIENT.wall, peak RSS (KiB) to $TMP/CLIENT.rss, the client's own
# seconds (if any) to $TMP/CLIENT.own; sets LAST (a short description).
# Clients: shoal libtorrent aria2c rqbit shoal2shoal.
download() {
    local client=$1 dir cmd own=
    dir=$TMP/out-$client
    rm -rf "$dir"
    mkdir -p "$dir"
    case $client in
    shoal)
        cmd=("$SHOAL" download "$TMP/t.torrent" -o "$dir" --port 0 --bind 127.0.0.1 -x -q --json) ;;
    shoal2shoal)
        cmd=("$SHOAL" download "$TMP/t.torrent" -o "$dir" --port 0 --bind 127.0.0.1 --no-trackers
            --peer "$SHOAL_SEED" -x -q --json) ;;
    libtorrent)
        cmd=("$LTPY" "$HERE/lt_leech.py" "$TMP/t.torrent" "$dir" "$TIMEOUT") ;;
    aria2c)
        cmd=(aria2c --no-conf -q --seed-time=0 --enable-dht=false --enable-dht6=false
            --bt-enable-lpd=false --enable-peer-exchange=false --listen-port="$(free_port)"
            --file-allocation=none -d "$dir" "$TMP/t.torrent") ;;
    rqbit)
        cmd=(rqbit --disable-dht download -o "$dir" --exit-on-finish "$TMP/t.torrent") ;;
    esac
    sync # nothing of earlier runs left to write back during this one
    local t0 t1 rc=0 seed0 seed1
    seed0=$(cpu_of "$LT_SEED_PID")
    t0=$(date +%s.%N)
    # In the background, so that a signal to this script is handled at once
    # (cleanup kills timeout, which passes the signal to its process group).
    env -u RUST_LOG timeout "$TIMEOUT" /usr/bin/time -f '%e %M %U %S' -o "$TMP/time" \
        "${cmd[@]}" >"$TMP/$client.out" 2>"$TMP/$client.err" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    t1=$(date +%s.%N)
    seed1=$(cpu_of "$LT_SEED_PID")
    forget_pid "$pid"
    if [ "$rc" -ne 0 ]; then
        LAST="FAILED (exit $rc; see below)"
        {
            echo "--- $client failed (exit $rc): ${cmd[*]}"
            tail -n 5 "$TMP/$client.out" "$TMP/$client.err"
        } >>"$TMP/failures"
        rm -rf "$dir"
        return 0
    fi
    if [ "$VERIFY" = 1 ] && ! cmp -s "$FILE" "$dir/$NAME"; then
        LAST="WRONG DATA"
        echo "--- $client: $dir/$NAME differs from the source" >>"$TMP/failures"
        rm -rf "$dir"
        return 0
    fi
    rm -rf "$dir"
    local wall rss cpu
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    rss=$(awk 'END { print $2 }' "$TMP/time")
    cpu=$(awk 'END { printf "%.2f", $3 + $4 }' "$TMP/time")
    echo "$wall" >>"$TMP/$client.wall"
    echo "$rss" >>"$TMP/$client.rss"
    echo "$cpu" >>"$TMP/$client.cpu"
    awk -v a="$seed0" -v b="$seed1" 'BEGIN { printf "%.2f\n", b - a }' >>"$TMP/$client.seedcpu"
    case $client in
    shoal | shoal2shoal | libtorrent)
        own=$(sed -n 's/.*"seconds": *\([0-9.]*\).*/\1/p' "$TMP/$client.out" | tail -n1)
        [ -n "$own" ] && printf '%.3f\n' "$own" >>"$TMP/$client.own"
        ;;
    esac
    LAST=$(awk -v w="$wall" -v o="$own" -v r="$rss" 'BEGIN {
        printf "%6.2f s", w
        if (o != "") printf " (own %.2f)", o
        printf " %5.0f MiB", r / 1024 }')
    [ "$client" = shoal2shoal ] || LAST+=$(printf ', CPU %s s, lt seed CPU %s s' "$cpu" "$(tail -n1 "$TMP/$client.seedcpu")")
}

cpu_of() { # PID: its user + system CPU seconds so far
    sed 's/^.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
med() { [ -s "$TMP/$1" ] && median <"$TMP/$1" || true; }
maxof() { [ -s "$TMP/$1" ] && sort -g "$TMP/$1" | tail -n1 || true; }

echo "== warming the libtorrent seed: one untimed libtorrent download (it hashes every piece as it serves it)"
download libtorrent
echo "   warm-up: $LAST"
if [ -s "$TMP/failures" ]; then
    cat "$TMP/failures" >&2
    exit 1
fi
rm -f "$TMP"/libtorrent.*

[ -n "$CLIENTS_SET" ] || [ "$HAVE_RQBIT" = 1 ] || echo "rqbit: not installed, skipped"

echo "== $REPS rounds; each: ${CLIENTS[*]} from the libtorrent seed (peers from the tracker), then shoal -> shoal (--peer)"
echo "   per run: wall time of the process (own: the client's figure), peak RSS"
for ((r = 1; r <= REPS; r++)); do
    line="  round $r:"
    for c in "${CLIENTS[@]}" shoal2shoal; do
        download "$c"
        label=$c
        [ "$c" = shoal2shoal ] && label="shoal->shoal"
        line+="  $label $LAST;"
        kill -0 "$LT_SEED_PID" 2>/dev/null || { echo "error: the libtorrent seed died" >&2; cat "$TMP/lt-seed.log" >&2; exit 1; }
        kill -0 "$SHOAL_SEED_PID" 2>/dev/null || { echo "error: the shoal seed died" >&2; cat "$TMP/shoal-seed.log" >&2; exit 1; }
    done
    echo "${line%;}"
done

SEED_STATUS=$(awk '/^Vm(HWM|RSS)|^Rss(Anon|File)/ { printf "%s %.0f MiB, ", $1, $2 / 1024 }' "/proc/$SHOAL_SEED_PID/status")
SEED_CPU=$(sed 's/^.*) //' "/proc/$SHOAL_SEED_PID/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "user %.2f s, sys %.2f s", $12 / hz, $13 / hz }')

# --- summary ---------------------------------------------------------------------------

echo
echo "== summary: ${SIZE_MB} MiB, $PIECES pieces, $REPS rounds, loopback, libtorrent seed: $LT_SEED settings"
for c in "${CLIENTS[@]}" shoal2shoal; do
    label=$c
    [ "$c" = shoal2shoal ] && label="shoal->shoal"
    n=$( [ -s "$TMP/$c.wall" ] && wc -l <"$TMP/$c.wall" || echo 0)
    if [ "$n" = 0 ]; then
        printf '  %-13s no successful run\n' "$label"
        continue
    fi
    m=$(med "$c.wall")
    awk -v l="$label" -v m="$m" -v o="$(med "$c.own")" -v rss="$(maxof "$c.rss")" -v n="$n" -v reps="$REPS" -v s="$BYTES" \
        -v cpu="$(med "$c.cpu")" -v scpu="$(med "$c.seedcpu")" -v seeded="$([ "$c" = shoal2shoal ] || echo 1)" 'BEGIN {
        printf "  %-13s median %6.2f s (%5.0f MB/s)", l, m, s / m / 1e6
        if (o != "") printf ", own figure %6.2f s", o
        printf ", peak RSS %5.0f MiB", rss / 1024
        printf ", CPU %.2f s", cpu
        if (seeded) printf ", libtorrent seed CPU %.2f s", scpu
        if (n < reps) printf "  [%d of %d runs succeeded]", n, reps
        printf "\n"
    }'
done
echo "  (libtorrent's RSS counts the file pages it maps: libtorrent 2.0 does its disk I/O through mmap)"
echo "  shoal seed after the runs: ${SEED_STATUS%, }; CPU $SEED_CPU (its RSS counts the file mapped to check it at start)"

M_SHOAL=$(med shoal.wall)
M_LT=$(med libtorrent.wall)
M_ARIA=$(med aria2c.wall)
M_RQ=$(med rqbit.wall)
M_S2S=$(med shoal2shoal.wall)
RSS_SHOAL=$(cat "$TMP/shoal.rss" "$TMP/shoal2shoal.rss" 2>/dev/null | sort -g | tail -n1)

ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }' || echo "n/a"; }
echo "  ratio shoal / libtorrent: $(ratio "$M_SHOAL" "$M_LT")  (wall-time medians; below 1: shoal faster)"
[ -n "$M_ARIA" ] && echo "  ratio shoal / aria2c:     $(ratio "$M_SHOAL" "$M_ARIA")"
[ "$HAVE_RQBIT" = 1 ] && echo "  ratio shoal / rqbit:      $(ratio "$M_SHOAL" "$M_RQ")"

verdict() { [ "$1" = 1 ] && echo PASS || echo MISS; }
echo
if [ -n "$M_SHOAL" ] && [ -n "$M_LT" ]; then
    ok=$(awk -v a="$M_SHOAL" -v b="$M_LT" -v g="$GOAL_LT_RATIO" 'BEGIN { print (a <= g * b) ? 1 : 0 }')
    echo "$(verdict "$ok"): shoal <= $GOAL_LT_RATIO x libtorrent's time  (shoal $M_SHOAL s, libtorrent $M_LT s: $(ratio "$M_SHOAL" "$M_LT") x)"
else
    echo "MISS: shoal <= $GOAL_LT_RATIO x libtorrent's time  (no successful runs to compare)"
fi
if [ -n "$M_S2S" ]; then
    ok=$(awk -v a="$M_S2S" -v g="$GOAL_S2S_SECONDS" -v mb="$SIZE_MB" 'BEGIN { print (a <= g * mb / 1024) ? 1 : 0 }')
    echo "$(verdict "$ok"): shoal -> shoal 1 GiB in <= $GOAL_S2S_SECONDS s  (median $M_S2S s for ${SIZE_MB} MiB, own figure $(med shoal2shoal.own) s)"
else
    echo "MISS: shoal -> shoal 1 GiB in <= $GOAL_S2S_SECONDS s  (no successful run)"
fi
if [ -n "$RSS_SHOAL" ]; then
    ok=$(awk -v k="$RSS_SHOAL" -v g="$GOAL_RSS_MIB" 'BEGIN { print (k <= g * 1024) ? 1 : 0 }')
    echo "$(verdict "$ok"): shoal peak RSS <= $GOAL_RSS_MIB MiB  ($(awk -v k="$RSS_SHOAL" 'BEGIN { printf "%.1f", k / 1024 }') MiB, the most over all shoal downloads)"
else
    echo "MISS: shoal peak RSS <= $GOAL_RSS_MIB MiB  (no successful run)"
fi

if [ -s "$TMP/failures" ]; then
    echo
    echo "== failures"
    cat "$TMP/failures"
    exit 1
fi
