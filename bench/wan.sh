#!/usr/bin/env bash
# WAN testbed: 1 seed + N leechers, each peer on a host of its own whose link
# is capped up and down, so the swarm is limited by upload links (as real
# swarms are) instead of by the CPU (as on loopback, bench/swarm.sh).
#
# Hosts are network namespaces this script makes: one veth pair per host
# from its eth0 to a bridge in a hub namespace, addresses in 10.$NET.0.0/16
# that exist only inside these namespaces. Each host is in a /24 of its own,
# as peers on the internet are: BEP 6 derives a peer's allowed-fast pieces
# from its /24, and peers sharing one would all be allowed (and, while
# choked, ask the seed for) the same pieces. Each host's link is capped with tc tbf
# on both ends of its veth: UP_MBIT out of the host (its eth0), DOWN_MBIT
# into it (the hub's end). This kernel has no netem: no added delay or loss;
# the only delay is the queue of a full link (at most QUEUE_MS). The
# `shoal tracker` runs on the hub, uncapped (10.$NET.0.1); the seed is
# 10.$NET.1.1, leecher i 10.$NET.(2 + i).1.
#
# One round runs every mode in MODES, one after the other (bench/swarm/run.py
# does each run, inside the hub namespace; every peer is one process started
# with `ip netns exec` on its host):
#   shoal          shoal seed + N shoal leechers
#   lt             python3-libtorrent seed + N libtorrent leechers (stock
#                  settings, one process per peer: bench/swarm/lt_peer.py)
#   mixed          shoal seed; every second leecher libtorrent (N/2 of them),
#                  the others shoal
#   shoal-initial  as shoal, the seed with --initial-seeding (BEP 16)
#   lt-super       as lt, the seed with libtorrent's super-seeding
#   mixed-initial  as mixed, the seed with --initial-seeding
# All leechers start at once (t0), each into an empty directory; all peers
# find each other through the tracker only (libtorrent keeps its stock PEX).
# Leechers keep seeding until the last one completes, as real peers linger.
# A leecher is complete when it has every piece, hash-checked. Afterwards
# every leecher's file is compared with the seed's byte for byte; a
# mismatch, a crash or a timeout fails the run and the script (exit 1).
#
# Printed per run and as medians per mode:
#   last, median   seconds from t0 until the last / the median leecher
#                  completes, and each as a multiple of the limit
#   seed up        the seed's payload upload / the content's size
#   limit          the physical limit: the seed must upload one copy at its
#                  cap, and N copies need N x size of upload from N + 1 hosts
#                  (and every leecher must download one copy):
#                  max(size / SEED_UP, N x size / ((N + 1) x UP), size / DOWN).
#                  It counts payload at the raw cap; TCP/IP headers take
#                  ~4.5 % of a full link (1448 payload bytes per 1514), so
#                  even a perfect swarm needs ~1.05 x the limit.
#   links          the share of its cap each link carried from t0 to the
#                  last completion (wire bytes, seen on the hub's end): the
#                  seed's, the leechers' mean, the swarm's; the seconds the
#                  seed's link carried less than half its cap ("seed idle"),
#                  and when it had carried one copy's worth of bytes.
# Ratios: shoal / lt and mixed / lt (plain), shoal-initial / lt-super,
# each time / the limit; goal lines (issue 18): <= 1.2 x the limit,
# <= 0.8 x libtorrent, mixed no slower than lt.
#
# Usage (as root: namespaces and tc need it): bench/wan.sh
#   env: N=8 (leechers) SIZE_MB=32 PIECE_KB=256 UP_MBIT=20 DOWN_MBIT=100
#        SEED_UP_MBIT=$UP_MBIT QUEUE_MS=100 (tbf latency: the most a full
#        link queues) ROUNDS=1 (every mode ROUNDS times, interleaved; medians)
#        MODES="shoal lt mixed shoal-initial lt-super mixed-initial"
#        TIMEOUT=300 (per run) DATA_DIR=/tmp/shoal-bench NET=201 (10.NET.0.0/16)
#        SEED_ARGS="..." (more options for a shoal seed, e.g. --upload-slots 8)
#        LEECH_ARGS="..." (the same for the shoal leechers)
#        SHOAL_BIN=path (a saved shoal binary to run instead of building this
#          tree's, e.g. to compare two builds in turn)
#        PEER_LOG="..." (RUST_LOG for the shoal peers; with KEEP=1, e.g.
#          "warn,shoal=info,client=info,shoal::slots=debug,shoal::spread=debug":
#          each second's upload slots, and the seed's turn-aways;
#          shoal::demand=debug: every second, per connection, what we lack
#          of the peer's pieces, our requests in flight and queue depth, and
#          its requests queued at us); shoal::chokes=debug: each choke and
#          unchoke we send; shoal::blocks=debug: each request, block,
#          reject and have (with shoal::pieces=debug and KEEP=1,
#          bench/wan/spread.py RUN_DIR prints the backlog per second, each
#          hop's delays, and the seed's first copies)
#        DUMP_TX=FILE (each host's sampled link counters of the last run;
#          bench/wan/links.py FILE prints every host's link use per second)
#        RESULTS=FILE (keep every run's JSON line there) KEEP=1 (keep each
#        run's directory: peers' stderr, the torrent, the copies)
#        CAPTURE=1: also capture the seed's link (bench/wan/seedcap.py, a
#        python AF_PACKET reader; costs some CPU) and print, per run, the
#        blocks the seed sent more than once (split by whether the asker
#        could have had the piece from a peer already) and, per second,
#        what it sent and how many requests it had waiting
# Everything it made (namespaces, their veths and qdiscs, processes: ended by
# PID, since deleting a namespace does not end them) is removed on exit, on
# failure and on Ctrl-C.
set -euo pipefail
# No DHT: its default routers are on the internet, unreachable from here.
export SHOAL_NO_DHT=1

N=${N:-8}
SIZE_MB=${SIZE_MB:-32}
PIECE_KB=${PIECE_KB:-256}
UP_MBIT=${UP_MBIT:-20}
DOWN_MBIT=${DOWN_MBIT:-100}
SEED_UP_MBIT=${SEED_UP_MBIT:-$UP_MBIT}
QUEUE_MS=${QUEUE_MS:-100}
ROUNDS=${ROUNDS:-1}
MODES=${MODES:-shoal lt mixed shoal-initial lt-super mixed-initial}
TIMEOUT=${TIMEOUT:-300}
DATA_DIR=${DATA_DIR:-/tmp/shoal-bench}
NET=${NET:-201}
RESULTS=${RESULTS:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWARM=$ROOT/bench/swarm
LTPY=/usr/bin/python3 # Debian's interpreter: the one with the libtorrent module

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces and tc need it)"
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    die "ip and tc are required (apt-get install iproute2)"
fi
if [ "$N" -lt 1 ] || [ "$N" -gt 200 ]; then
    die "N must be 1..200"
fi
for m in $MODES; do
    case $m in
    shoal | shoal-initial) ;;
    lt | lt-super | mixed | mixed-initial)
        "$LTPY" -c 'import libtorrent' 2>/dev/null ||
            die "$LTPY has no libtorrent module (apt-get install python3-libtorrent); or MODES=\"shoal shoal-initial\""
        ;;
    *) die "unknown mode $m (shoal lt mixed shoal-initial lt-super mixed-initial)" ;;
    esac
done
PIECE_LOG=
for ((l = 14; l <= 24; l++)); do
    [ $((1 << l)) -eq $((PIECE_KB * 1024)) ] && PIECE_LOG=$l
done
[ -n "$PIECE_LOG" ] || die "PIECE_KB must be a power of two from 16 to 16384"

if [ -n "${SHOAL_BIN:-}" ]; then
    [ -x "$SHOAL_BIN" ] || die "SHOAL_BIN=$SHOAL_BIN is not an executable"
    echo "== using $SHOAL_BIN"
else
    echo "== building shoal (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi

mkdir -p "$DATA_DIR"
TMP=$(mktemp -d "$DATA_DIR/wan.XXXXXX")
PREFIX=shoalwan$$
HUB=$PREFIX-hub
NAMESPACES=()
RUN_PID=

# Ends every process left in our namespaces by PID (TERM, then KILL after
# 5 s): run.py ends its own, but not if it was killed itself.
end_processes() {
    local ns pids tries
    for ((tries = 0; tries < 50; tries++)); do
        pids=()
        for ns in "${NAMESPACES[@]}"; do
            mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
        done
        [ ${#pids[@]} -eq 0 ] && break
        if [ "$tries" -eq 0 ]; then
            kill -TERM "${pids[@]}" 2>/dev/null
        elif [ "$tries" -eq 49 ]; then
            kill -KILL "${pids[@]}" 2>/dev/null
        fi
        sleep 0.1
    done
}
# Ends our processes, then deletes the namespaces (which takes their veths
# and qdiscs along).
cleanup() {
    set +e
    trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
    if [ -n "$RUN_PID" ]; then
        kill "$RUN_PID" 2>/dev/null # run.py ends its own peers
        wait "$RUN_PID" 2>/dev/null
    fi
    end_processes
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    if [ "${KEEP:-}" = 1 ]; then
        echo "== kept $TMP (KEEP=1)"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy: a rebuild of target/ during the run cannot swap the binary.
SHOAL=$TMP/shoal
cp "${SHOAL_BIN:-$ROOT/target/release/shoal}" "$SHOAL"

# --- hosts ------------------------------------------------------------------------

# tbf: the bucket holds max(16 KiB, one 4 ms tick at the rate), the queue
# QUEUE_MS at the rate.
cap() { # NS DEV MBIT
    local burst=$(($3 * 125 * 4))
    [ "$burst" -ge 16384 ] || burst=16384
    tc -n "$1" qdisc add dev "$2" root tbf rate "$3mbit" burst "$burst" latency "${QUEUE_MS}ms"
}
add_host() { # NAME IP UP_MBIT
    local ns=$PREFIX-$1
    NAMESPACES+=("$ns")
    ip netns add "$ns"
    ip link add eth0 netns "$ns" type veth peer name "v$1" netns "$HUB"
    ip -n "$HUB" link set "v$1" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$2/16" dev eth0
    ip -n "$ns" link set eth0 up
    cap "$ns" eth0 "$3"
    cap "$HUB" "v$1" "$DOWN_MBIT"
    printf '{"ns": "%s", "ip": "%s", "dev": "eth0", "hub_dev": "v%s", "up_mbit": %s}' "$ns" "$2" "$1" "$3"
}

echo "== hosts: 1 seed + $N leechers in network namespaces $PREFIX-*, up $UP_MBIT Mbit/s (seed $SEED_UP_MBIT), down $DOWN_MBIT Mbit/s, queue ${QUEUE_MS} ms, tracker on the hub 10.$NET.0.1"
NAMESPACES+=("$HUB")
ip netns add "$HUB"
ip -n "$HUB" link set lo up
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" addr add "10.$NET.0.1/16" dev br0
ip -n "$HUB" link set br0 up
HOSTS=$TMP/hosts.json
{
    printf '{"tracker": {"ns": "%s", "ip": "10.%s.0.1"},\n "seed": ' "$HUB" "$NET"
    add_host seed "10.$NET.1.1" "$SEED_UP_MBIT"
    printf ',\n "leechers": ['
    for ((i = 0; i < N; i++)); do
        [ "$i" -eq 0 ] || printf ',\n  '
        add_host "l$i" "10.$NET.$((2 + i)).1" "$UP_MBIT"
    done
    printf ']}\n'
} >"$HOSTS"

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $("$SHOAL" --version)$("$LTPY" -c 'import libtorrent; print(", libtorrent", libtorrent.__version__)' 2>/dev/null || true)"

# --- the source file ------------------------------------------------------------

FILE=$DATA_DIR/swarm-${SIZE_MB}M.bin
BYTES=$((SIZE_MB * 1024 * 1024))
if [ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" -ne "$BYTES" ]; then
    echo "== making a ${SIZE_MB} MiB random file: $FILE"
    head -c "$BYTES" /dev/urandom >"$FILE.tmp.$$"
    mv "$FILE.tmp.$$" "$FILE"
else
    echo "== reusing $FILE"
fi
cat "$FILE" >/dev/null # into the page cache

# --- runs -------------------------------------------------------------------------

LIMITS=(--n "$N" --up "$UP_MBIT" --seed-up "$SEED_UP_MBIT" --down "$DOWN_MBIT")
echo "== $ROUNDS round(s) of: $MODES — ${SIZE_MB} MiB, ${PIECE_KB} KiB pieces"
"$LTPY" "$ROOT/bench/wan/summary.py" limit --size "$BYTES" "${LIMITS[@]}"
OUT=$TMP/results.jsonl
: >"$OUT"
for ((r = 1; r <= ROUNDS; r++)); do
    for m in $MODES; do
        ip netns exec "$HUB" "$LTPY" "$SWARM/run.py" "$m" "$SHOAL" "$FILE" "$TMP/run-$m" "$N" \
            "$TIMEOUT" --piece-log "$PIECE_LOG" --hosts "$HOSTS" >"$TMP/run.out" &
        RUN_PID=$!
        wait "$RUN_PID" || true
        RUN_PID=
        end_processes 2>/dev/null || true
        if ! tail -n1 "$TMP/run.out" | grep -q '^{'; then
            echo "{\"config\": \"$m\", \"ok\": false, \"error\": \"run.py printed no result\"}" >"$TMP/run.out"
        fi
        tail -n1 "$TMP/run.out" >>"$OUT"
        tail -n1 "$TMP/run.out" | "$LTPY" "$ROOT/bench/wan/summary.py" line --round "$r" "${LIMITS[@]}"
    done
done
[ -z "$RESULTS" ] || cp "$OUT" "$RESULTS"

echo
echo "== summary (median of $ROUNDS round(s); libtorrent = python3-libtorrent, stock settings, one process per peer)"
"$LTPY" "$ROOT/bench/wan/summary.py" table --results "$OUT" "${LIMITS[@]}"
