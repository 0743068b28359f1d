#!/usr/bin/env bash
# Benchmark `shoal tracker` against opentracker (HTTP announces, loopback),
# then measure shoal's memory per peer with 1,000,000 peers.
#
# Usage: bench/tracker.sh
#   env: HASHES=1000 DURATION=5 WARMUP=2 CONNS=50 ROUNDS=7
#        TRACKER_CPUS=0 WRK_CPUS=1 SHOAL_THREADS=(1 if pinned, else cores)
#        FILL_SWARMS=100000 FILL_PER=10 FILL_TIMEOUT=180 OT_MEMORY=1 MEMORY=1
#        CPU_CAP=50 CAP_ROUNDS=5 CEILING=1
#   ROUNDS=0 CAP_ROUNDS=0: the memory part only (no throughput runs).
#
# Throughput: HASHES random info hashes (opentracker's whitelist; shoal
# gets the same file as --whitelist so both check every announce against
# it). bench/tracker/announce.lua makes every request a fresh announce:
# random hash, random peer id and port, 80% no event / 10% started /
# 5% stopped / 5% completed, left=0 30% of the time, compact=1, numwant=50.
# One wrk thread, CONNS connections, modes:
#   close      `Connection: close`: a new TCP connection per announce, as
#              most clients do (shoal and opentracker);
#   keepalive  one connection for many announces (shoal only: opentracker
#              closes the connection after every reply).
# Each run starts a fresh tracker (so every run sees the same state: empty
# swarms that grow, nothing expiring), checks sample announces (a second
# peer must be told about the first), warms up for WARMUP s while wrk
# checks every reply (HTTP 200, a bencoded dict with "peers", no "failure
# reason"), then times DURATION s. ROUNDS rounds, interleaved (shoal close,
# opentracker close, shoal keep-alive, the order rotating each round); the summary takes medians, and
# also the median of each round's own ratios (runs of one round are
# seconds apart, so they share the machine's state: this machine is a
# shared VM whose speed drifts by up to 40% from one minute to the next,
# so more, shorter rounds beat fewer, longer ones). wrk's
# non-2xx/socket-error counts and shoal's failure-reply count (from
# /stats.json) are printed for every timed run.
#
# CPU placement on this 2-core machine: the load generator is as expensive
# as the server (on loopback each TCP handshake and teardown is kernel work
# on both ends), so the fairest split is one core each: wrk pinned to
# WRK_CPUS (1), the tracker pinned to TRACKER_CPUS (0). opentracker serves
# HTTP from one thread, so shoal runs --threads 1 there too: the comparison
# is per core. TRACKER_CPUS= (empty) leaves the trackers unpinned and shoal
# on all cores. Each run also reports the tracker's own CPU time per
# announce (user+sys from /proc/PID/stat; this kernel charges softirq work
# to whichever task is running, so loopback packet processing is split
# between wrk and the tracker) and how busy wrk was: when wrk is ~100%
# busy, requests/s is bounded by the client and CPU per announce is the
# better measure of the tracker. So a second set of CAP_ROUNDS rounds holds
# each tracker to CPU_CAP% of its core (a cgroup CPU quota, as root;
# CPU_CAP= to skip): then wrk has room to spare and announces/s is what a
# tracker achieves with the same CPU. Both summaries are printed.
#
# Ceiling (CEILING=1, needs cc): every round also runs
# bench/tracker/zerowork.c, a C responder that does no tracker work at all
# (the same small reply to every request, epoll, TCP_DEFER_ACCEPT, the FIN
# in the reply's segment), in both modes. Its ratios to opentracker are
# the most any tracker can show under this load on this machine: when wrk
# is the bottleneck they are wrk's, not the trackers'.
#
# Memory: a fresh shoal (--interval 3600, nothing expires), FILL_SWARMS x
# FILL_PER peers announced by bench/tracker/fill.lua over keep-alive
# connections; bytes per peer = (VmRSS after - VmRSS at start) / peers, next
# to shoal's own peer_heap_bytes. The same fill against a fresh opentracker
# (whitelisted with the FILL_SWARMS hashes) unless OT_MEMORY=0.
set -euo pipefail

HASHES=${HASHES:-1000}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-7}
TRACKER_CPUS=${TRACKER_CPUS-0}
WRK_CPUS=${WRK_CPUS-1}
if [ -n "$TRACKER_CPUS" ]; then
    SHOAL_THREADS=${SHOAL_THREADS:-1}
else
    SHOAL_THREADS=${SHOAL_THREADS:-$(nproc)}
fi
FILL_SWARMS=${FILL_SWARMS:-100000}
FILL_PER=${FILL_PER:-10}
FILL_TIMEOUT=${FILL_TIMEOUT:-180}
OT_MEMORY=${OT_MEMORY:-1}
MEMORY=${MEMORY:-1}
CPU_CAP=${CPU_CAP-50}
CAP_ROUNDS=${CAP_ROUNDS:-5}
CEILING=${CEILING:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=$ROOT/target/release/shoal
HERE=$ROOT/bench/tracker
HELPER=(python3 "$HERE/helper.py")

for tool in wrk opentracker python3 taskset /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

echo "== building shoal (release)"
(cd "$ROOT" && cargo build --release --quiet)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-tracker-bench.XXXXXX")
chmod 755 "$TMP"

# The zero-work responder (bench/tracker/zerowork.c): the ceiling for any
# tracker under this load, run in every round next to the trackers.
ZEROWORK=
if [ "$CEILING" = 1 ]; then
    if command -v cc >/dev/null && cc -O2 -o "$TMP/zerowork" "$HERE/zerowork.c"; then
        ZEROWORK=$TMP/zerowork
    else
        echo "== (no zero-work ceiling: cannot compile bench/tracker/zerowork.c with cc)"
    fi
fi
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
    [ -n "${CGROUP:-}" ] && rmdir "$CGROUP" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TRACKER_PIN=()
[ -n "$TRACKER_CPUS" ] && TRACKER_PIN=(taskset -c "$TRACKER_CPUS")
WRK_PIN=()
[ -n "$WRK_CPUS" ] && WRK_PIN=(taskset -c "$WRK_CPUS")

# --- process helpers ----------------------------------------------------------

forget_pid() { # PID: drop it from the cleanup list
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# start_shoal LOG ARGS... : sets SHOAL_PID, SHOAL_PORT (shoal binds port 0
# and says which port it got).
start_shoal() {
    local log=$1
    shift
    env -u RUST_LOG "${TRACKER_PIN[@]}" "$SHOAL" tracker --listen 127.0.0.1:0 "$@" 2>"$log" &
    SHOAL_PID=$!
    PIDS+=("$SHOAL_PID")
    SHOAL_PORT=
    for _ in $(seq 100); do
        SHOAL_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$log" | head -n1)
        [ -n "$SHOAL_PORT" ] && return 0
        kill -0 "$SHOAL_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: shoal tracker did not start:" >&2
    cat "$log" >&2
    exit 1
}

# start_opentracker DIR PORT [ARGS...] : DIR holds "whitelist"; sets OT_PID.
start_opentracker() {
    local dir=$1 port=$2
    shift 2
    chmod 755 "$dir"
    chmod 644 "$dir/whitelist"
    # As root opentracker chroots into -d DIR (then drops to nobody), so the
    # whitelist path is relative to that new root.
    local wl=/whitelist
    [ "$(id -u)" = 0 ] || wl=$dir/whitelist
    "${TRACKER_PIN[@]}" opentracker -i 127.0.0.1 -p "$port" -P "$port" -w "$wl" -d "$dir" "$@" \
        >"$dir/log" 2>&1 &
    OT_PID=$!
    PIDS+=("$OT_PID")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$OT_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: opentracker did not start:" >&2
    cat "$dir/log" >&2
    exit 1
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# utime+stime of a process in clock ticks: "user sys"
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }
# busy ticks of the whole machine (all but idle and iowait)
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }

# --- setup ----------------------------------------------------------------------

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$TRACKER_CPUS" ]; then
    echo "== placement: trackers on CPU $TRACKER_CPUS, wrk (1 thread) on CPU ${WRK_CPUS:-any}; shoal --threads $SHOAL_THREADS (opentracker serves HTTP from one thread)"
else
    echo "== placement: trackers unpinned, wrk (1 thread) on CPU ${WRK_CPUS:-any}; shoal --threads $SHOAL_THREADS"
fi

OTDIR=$TMP/ot
mkdir -p "$OTDIR"
"${HELPER[@]}" hashes "$HASHES" "$OTDIR/whitelist" "shoal-bench-$$-$RANDOM-"
HASHFILE=$OTDIR/whitelist

echo "== $HASHES whitelisted info hashes; every run below gets a freshly started tracker (same"
echo "   state for both: empty swarms that grow during the run; peers never expire within it)"

# --- throughput ----------------------------------------------------------------

# wrk_errors FILE: "non2xx connect read write timeout"
wrk_errors() {
    awk '
        /Non-2xx or 3xx responses:/ { n = $NF }
        /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
        END { printf "%d %d %d %d %d\n", n, c, r, w, t }' "$1"
}

shoal_failures() { # ANNOUNCE_URL
    "${HELPER[@]}" shoal-stats "${1%/announce}/stats.json" | awk '{ print $4 }'
}

# bench NAME PID URL MODE ROUND : warm-up (checked) + timed run; appends the
# rate to $TMP/NAME.rps and tracker CPU us/announce to $TMP/NAME.cpu
# start_tracker NAME: a fresh tracker for one run; sets PID and URL
start_tracker() {
    case $1 in
    shoal-*)
        start_shoal "$TMP/$1.log" --threads "$SHOAL_THREADS" --whitelist "$HASHFILE"
        PID=$SHOAL_PID
        URL=http://127.0.0.1:$SHOAL_PORT/announce
        ;;
    opentracker-*)
        local port
        port=$("${HELPER[@]}" port)
        start_opentracker "$OTDIR" "$port"
        PID=$OT_PID
        URL=http://127.0.0.1:$port/announce
        ;;
    zerowork-*)
        "${TRACKER_PIN[@]}" "$ZEROWORK" >"$TMP/$1.out" &
        PID=$!
        PIDS+=("$PID")
        local port=
        for _ in $(seq 100); do
            port=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$TMP/$1.out")
            [ -n "$port" ] && break
            sleep 0.05
        done
        [ -n "$port" ] || { echo "FAIL: the zero-work responder did not start" >&2; exit 1; }
        URL=http://127.0.0.1:$port/announce
        ;;
    esac
    case $1 in *-cap) echo "$PID" >"$CGROUP/cgroup.procs" ;; esac
}

# A cgroup that gives its processes CPU_CAP% of one core (cgroup v2's
# cpu.max, or v1's CFS quota); sets CGROUP, or leaves it empty (and says
# why) when that is not possible.
make_cgroup() {
    CGROUP=
    local quota=$((CPU_CAP * 1000)) dir
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        dir=/sys/fs/cgroup/shoal-bench-$$
        mkdir "$dir" 2>/dev/null && echo "$quota 100000" >"$dir/cpu.max" 2>/dev/null && CGROUP=$dir
    elif [ -d /sys/fs/cgroup/cpu ]; then
        dir=/sys/fs/cgroup/cpu/shoal-bench-$$
        mkdir "$dir" 2>/dev/null && echo 100000 >"$dir/cpu.cfs_period_us" &&
            echo "$quota" >"$dir/cpu.cfs_quota_us" 2>/dev/null && CGROUP=$dir
    fi
    [ -n "$CGROUP" ] || echo "  (no CPU cap: cannot make a cgroup with a CPU quota here; run as root with the cpu controller)"
}

# bench NAME MODE ROUND : fresh tracker, sample announces, warm-up (every
# reply checked), timed run; appends the rate to $TMP/NAME.rps and tracker
# CPU us/announce to $TMP/NAME.cpu
bench() {
    local name=$1 mode=$2 round=$3
    local out=$TMP/$name.wrk
    local PID URL
    start_tracker "$name"
    local pid=$PID url=$URL
    if [ "${name%%-*}" = zerowork ]; then
        : # answers every announce with the same reply: nothing to verify
    elif [ "$round" = 1 ]; then
        printf '  %-17s sample announces (two peers per swarm; the 2nd must be told about the 1st): ' "$name"
        "${HELPER[@]}" verify "$url" "$HASHFILE" 20
    else
        "${HELPER[@]}" verify "$url" "$HASHFILE" 20 >/dev/null
    fi
    "${WRK_PIN[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/announce.lua" "$url" \
        -- "$HASHFILE" "$mode" check >"$out.warm" 2>&1 || { cat "$out.warm" >&2; exit 1; }
    local good bad
    read -r good bad < <(sed -n 's/^CHECK good=\([0-9]*\) bad=\([0-9]*\)$/\1 \2/p' "$out.warm") || true
    if [ -z "${good:-}" ] || [ "$good" -eq 0 ] || [ "$bad" -gt $((good / 1000)) ]; then
        echo "FAIL: $name warm-up: ${good:-0} good replies, ${bad:-?} bad" >&2
        grep CHECK "$out.warm" >&2 || cat "$out.warm" >&2
        exit 1
    fi

    local f0=0 f1=0
    [ "${name%%-*}" = shoal ] && f0=$(shoal_failures "$url")
    local c0 c1 b0 b1
    c0=$(cpu_ticks "$pid")
    b0=$(busy_ticks)
    "${WRK_PIN[@]}" /usr/bin/time -f '%U %S %e' -o "$out.time" \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$HERE/announce.lua" "$url" \
        -- "$HASHFILE" "$mode" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    c1=$(cpu_ticks "$pid")
    b1=$(busy_ticks)
    [ "${name%%-*}" = shoal ] && f1=$(shoal_failures "$url")
    kill -0 "$pid" 2>/dev/null || { echo "FAIL: $name: the tracker died" >&2; exit 1; }

    local reqs rps errs
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    errs=$(wrk_errors "$out")
    echo "$rps" >>"$TMP/$name.rps"
    awk -v name="$name" -v round="$round" -v reqs="$reqs" -v rps="$rps" -v errs="$errs" \
        -v c0="$c0" -v c1="$c1" -v b0="$b0" -v b1="$b1" -v hz="$HZ" -v fails=$((f1 - f0)) \
        -v wt="$(tail -n1 "$out.time")" -v cpufile="$TMP/$name.cpu" 'BEGIN {
        split(c0, a, " "); split(c1, b, " "); split(errs, e, " "); split(wt, w, " ")
        usr = (b[1] - a[1]) / hz; sys = (b[2] - a[2]) / hz
        wall = w[3]; wrk = w[1] + w[2]
        other = (b1 - b0) / hz - usr - sys - wrk
        if (other < 0) other = 0
        us = (usr + sys) / reqs * 1e6
        print us >> cpufile
        printf "  %-17s round %d: %8.0f announces/s  (%d in %.2f s; non-2xx %d; socket errors connect %d read %d write %d timeout %d%s)\n", \
            name, round, rps, reqs, wall, e[1], e[2], e[3], e[4], e[5], \
            (name ~ /^shoal/ ? sprintf("; failure replies %d", fails) : "")
        printf "  %-17s          tracker CPU %3.0f%% of a core (user %.0f%%, sys %.0f%%) = %.1f us/announce; wrk CPU %3.0f%%; everything else %3.0f%%\n", \
            "", (usr + sys) / wall * 100, usr / wall * 100, sys / wall * 100, us, wrk / wall * 100, other / wall * 100
    }'
    stop_pid "$pid"
}

if [ "$ROUNDS" -gt 0 ]; then
    echo "== throughput: $ROUNDS round(s) of ${WARMUP} s warm-up + ${DURATION} s, 1 wrk thread, $CONNS connections"
    echo "   (opentracker closes each connection without a 'Connection: close' header, so wrk learns it"
    echo "    only when its next request on that socket fails: ~1 read error per announce is expected there)"
fi
# One round: the three runs, in an order that rotates from round to round
# (back-to-back runs on this VM are not independent: which one goes first
# in a round must not favour one tracker).
round() { # SUFFIX ROUND
    local order=("shoal-close close" "opentracker-close close" "shoal-keepalive keepalive")
    [ -n "$ZEROWORK" ] && order+=("zerowork-close close" "zerowork-keepalive keepalive")
    local i run n=${#order[@]}
    for ((i = 0; i < n; i++)); do
        run=${order[$(((i + $2 - 1) % n))]}
        bench "${run% *}$1" "${run#* }" "$2"
    done
}

for ((r = 1; r <= ROUNDS; r++)); do
    round "" "$r"
done

summary() { # SUFFIX TITLE
    local x=$1
    # No rounds of this kind ran (ROUNDS=0 or CAP_ROUNDS=0): nothing to sum up.
    [ -s "$TMP/shoal-close$x.rps" ] || return 0
    local sc oc sk scu ocu sku
    sc=$(median <"$TMP/shoal-close$x.rps")
    oc=$(median <"$TMP/opentracker-close$x.rps")
    sk=$(median <"$TMP/shoal-keepalive$x.rps")
    scu=$(median <"$TMP/shoal-close$x.cpu")
    ocu=$(median <"$TMP/opentracker-close$x.cpu")
    sku=$(median <"$TMP/shoal-keepalive$x.cpu")
    echo
    echo "== $2"
    awk -v sc="$sc" -v oc="$oc" -v sk="$sk" -v scu="$scu" -v ocu="$ocu" -v sku="$sku" 'BEGIN {
        printf "  shoal       close:      %8.0f announces/s   %5.1f us tracker CPU/announce\n", sc, scu
        printf "  opentracker close:      %8.0f announces/s   %5.1f us tracker CPU/announce\n", oc, ocu
        printf "  shoal       keep-alive: %8.0f announces/s   %5.1f us tracker CPU/announce\n", sk, sku
        r1 = sc / oc; r2 = sk / oc
        printf "  shoal close / opentracker close:      %5.2f  (goal >= 1.1: %s)\n", r1, (r1 >= 1.1 ? "met" : "NOT met")
        printf "  shoal keep-alive / opentracker close: %5.2f  (goal >= 4:   %s)\n", r2, (r2 >= 4 ? "met" : "NOT met")
        printf "  tracker CPU per announce, opentracker / shoal: close %.2f, keep-alive %.2f (above 1: shoal cheaper)\n", ocu / scu, ocu / sku
    }'
    # The same ratios taken within each round, then their median.
    paste "$TMP/shoal-close$x.rps" "$TMP/opentracker-close$x.rps" "$TMP/shoal-keepalive$x.rps" >"$TMP/rounds"
    local r1s r2s
    r1s=$(awk '{ printf "%.2f ", $1 / $2 }' "$TMP/rounds")
    r2s=$(awk '{ printf "%.2f ", $3 / $2 }' "$TMP/rounds")
    echo "  per round, close / opentracker:      $r1s-> median $(echo "$r1s" | tr ' ' '\n' | grep . | median)"
    echo "  per round, keep-alive / opentracker: $r2s-> median $(echo "$r2s" | tr ' ' '\n' | grep . | median)"
    if [ -s "$TMP/zerowork-close$x.rps" ]; then
        # What a tracker doing no work at all gets under the same load: the
        # ceiling of the ratios above on this machine.
        paste "$TMP/zerowork-close$x.rps" "$TMP/opentracker-close$x.rps" "$TMP/zerowork-keepalive$x.rps" >"$TMP/rounds"
        r1s=$(awk '{ printf "%.2f ", $1 / $2 }' "$TMP/rounds")
        r2s=$(awk '{ printf "%.2f ", $3 / $2 }' "$TMP/rounds")
        echo "  ceiling: a zero-work responder (bench/tracker/zerowork.c), $(median <"$TMP/zerowork-close$x.cpu") / $(median <"$TMP/zerowork-keepalive$x.cpu") us CPU per close / keep-alive request:"
        echo "    per round, close / opentracker:      $r1s-> median $(echo "$r1s" | tr ' ' '\n' | grep . | median)"
        echo "    per round, keep-alive / opentracker: $r2s-> median $(echo "$r2s" | tr ' ' '\n' | grep . | median)"
    fi
}

# Each tracker held to the same CPU budget, so that the tracker, not wrk,
# is the bottleneck: without a cap wrk saturates its core first (on
# loopback the client pays for most of each TCP handshake and teardown),
# and announces/s then measures the client. With the cap, announces/s
# measures what a tracker gets done with a given amount of CPU.
if [ -n "$CPU_CAP" ] && [ -n "$TRACKER_CPUS" ] && [ "$CAP_ROUNDS" -gt 0 ]; then
    echo
    echo "== throughput with each tracker held to ${CPU_CAP}% of its core: $CAP_ROUNDS round(s)"
    make_cgroup
    if [ -n "$CGROUP" ]; then
        for ((r = 1; r <= CAP_ROUNDS; r++)); do
            round -cap "$r"
        done
    fi
fi

summary "" "throughput summary, one core each (median of $ROUNDS)"
[ -n "${CGROUP:-}" ] && summary -cap "throughput summary, each tracker held to ${CPU_CAP}% of a core (median of $CAP_ROUNDS)"

# --- memory --------------------------------------------------------------------

[ "$MEMORY" = 1 ] || exit 0

FILL_PEERS=$((FILL_SWARMS * FILL_PER))
MEMDIR=$TMP/ot-mem
mkdir -p "$MEMDIR"
"${HELPER[@]}" hashes "$FILL_SWARMS" "$MEMDIR/whitelist" "shoal-fill-"

# fill NAME PID URL STATS_KIND STATS_URL MODE: fills, prints RSS figures;
# sets RSS0 RSS1 (KiB)
fill() {
    local name=$1 pid=$2 url=$3 kind=$4 stats=$5 mode=$6
    RSS0=$(rss_kib "$pid")
    local t0 t1
    t0=$(date +%s.%N)
    "${WRK_PIN[@]}" wrk -t1 -c"$CONNS" -d"${FILL_TIMEOUT}s" -s "$HERE/fill.lua" "$url" \
        -- "$MEMDIR/whitelist" "$FILL_PER" "$mode" >"$TMP/$name-fill.wrk" 2>&1 &
    local wpid=$!
    PIDS+=("$wpid")
    printf '  %s: %d peers in %d swarms over %s connections: ' "$name" "$FILL_PEERS" "$FILL_SWARMS" "$mode"
    "${HELPER[@]}" wait-peers "$kind" "$stats" "$FILL_PEERS" "$FILL_TIMEOUT"
    t1=$(date +%s.%N)
    stop_pid "$wpid"
    sleep 1
    kill -0 "$pid" 2>/dev/null || { echo "FAIL: $name died during the fill" >&2; exit 1; }
    RSS1=$(rss_kib "$pid")
}

echo
echo "== memory: $FILL_PEERS peers in $FILL_SWARMS swarms ($FILL_PER each, 3 seeders + 7 leechers)"
# Same placement as above (tracker on its own core, away from wrk).
start_shoal "$TMP/shoal-mem.log" --threads "$SHOAL_THREADS" --interval 3600
fill shoal "$SHOAL_PID" "http://127.0.0.1:$SHOAL_PORT/announce" shoal \
    "http://127.0.0.1:$SHOAL_PORT/stats.json" keepalive
read -r M_SWARMS M_PEERS M_HEAP M_FAILS M_ANN < <("${HELPER[@]}" shoal-stats "http://127.0.0.1:$SHOAL_PORT/stats.json")
awk -v r0="$RSS0" -v r1="$RSS1" -v sw="$M_SWARMS" -v p="$M_PEERS" -v heap="$M_HEAP" -v f="$M_FAILS" -v a="$M_ANN" 'BEGIN {
    printf "  shoal: /stats.json: %d swarms, %d peers, peer_heap_bytes %d (%.1f bytes/peer), %d announces, %d failures\n", sw, p, heap, heap / p, a, f
    printf "  shoal: VmRSS %.1f MiB at start, %.1f MiB filled: %.1f bytes/peer (RSS growth / peers)\n", r0 / 1024, r1 / 1024, (r1 - r0) * 1024 / p
}'
SHOAL_BPP=$(awk -v r0="$RSS0" -v r1="$RSS1" -v p="$M_PEERS" 'BEGIN { printf "%.1f", (r1 - r0) * 1024 / p }')
stop_pid "$SHOAL_PID"

if [ "$OT_MEMORY" = 1 ]; then
    OT_PORT=$("${HELPER[@]}" port)
    # -A 127.0.0.1: allow /stats from loopback (to count peers).
    start_opentracker "$MEMDIR" "$OT_PORT" -A 127.0.0.1
    "${HELPER[@]}" verify "http://127.0.0.1:$OT_PORT/announce" "$MEMDIR/whitelist" 1 >/dev/null
    # opentracker never keeps a connection open, so this fill reconnects per announce.
    fill opentracker "$OT_PID" "http://127.0.0.1:$OT_PORT/announce" opentracker \
        "http://127.0.0.1:$OT_PORT/stats?mode=peer" close
    OT_STATS=$(python3 -c 'import sys, urllib.request; print(" ".join(urllib.request.urlopen(sys.argv[1]).read().decode().split()[:2]))' \
        "http://127.0.0.1:$OT_PORT/stats?mode=peer")
    awk -v r0="$RSS0" -v r1="$RSS1" -v p="${OT_STATS%% *}" -v s="${OT_STATS##* }" -v sbpp="$SHOAL_BPP" 'BEGIN {
        printf "  opentracker: /stats?mode=peer: %d peers (%d seeders)\n", p, s
        printf "  opentracker: VmRSS %.1f MiB at start (with the whitelist), %.1f MiB filled: %.1f bytes/peer\n", r0 / 1024, r1 / 1024, (r1 - r0) * 1024 / p
        printf "  bytes/peer shoal / opentracker: %.2f\n", sbpp / ((r1 - r0) * 1024 / p)
    }'
    stop_pid "$OT_PID"
else
    echo "  opentracker memory: skipped (OT_MEMORY=0)"
fi
