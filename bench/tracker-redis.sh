#!/usr/bin/env bash
# The tracker's Redis swarm store (--store redis://): HTTP announces/s for
# one instance in memory, one instance on Redis and two instances on one
# Redis, and Redis round trips per announce.
#
# Usage: bench/tracker-redis.sh
#   env: HASHES=1000 DURATION=5 WARMUP=2 CONNS=64 ROUNDS=5 THREADS=1
#        WRK_CPUS=1 SERVER_CPUS=0
#
# Load: bench/tracker/announce.lua (random announces over HASHES info
# hashes: 80% no event, 10% started, 5% stopped, 5% completed, 30%
# seeders, numwant=50) over CONNS keep-alive connections from one wrk
# thread; with two instances, two wrk processes with CONNS/2 each, their
# rates summed. Every run gets fresh tracker processes and an emptied
# Redis (FLUSHALL), a checked warm-up (every reply a 200 with peers and no
# failure reason), then DURATION timed seconds. ROUNDS rounds, the order of
# the three configurations rotating; medians and ratios at the end.
#
# Placement on this 2-core machine: wrk on WRK_CPUS (1), the server side
# (the tracker instances, --threads THREADS each, and redis-server) on
# SERVER_CPUS (0): every configuration gets the same single core for all
# its server processes, so the ratios show what the store costs per
# announce, not how it scales over more cores (which this machine cannot
# show). SERVER_CPUS= / WRK_CPUS= (empty) leave them unpinned.
#
# Round trips per announce: Redis's INFO commandstats after CONFIG
# RESETSTAT gives the EVALSHA calls of the timed run (commandstats also
# counts the commands a script runs inside Redis: those are listed apart,
# and cost no round trip), divided by the announces the instances counted
# (/stats.json); the instances' own count of store round trips
# (redis.calls_total) is divided the same way. chihaya's Redis store, for
# comparison, needs 5 round trips for a leecher's plain announce, 6 for
# started and 7 for completed (chihaya/chihaya main, storage/redis/
# peer_store.go: HLEN x2 and HKEYS x2 for every announce, then a
# MULTI/EXEC of HSETs plus separate INCR/DECRs of its counters).
set -euo pipefail

HASHES=${HASHES:-1000}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-1}
WRK_CPUS=${WRK_CPUS-1}
SERVER_CPUS=${SERVER_CPUS-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=$ROOT/target/release/shoal
HERE=$ROOT/bench/tracker
HELPER=(python3 "$HERE/helper.py")

for tool in wrk redis-server redis-cli python3 taskset; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required (Debian: wrk, redis-server, python3, util-linux)" >&2; exit 1; }
done

echo "== building shoal (release)"
(cd "$ROOT" && cargo build --release --quiet)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-redis-bench.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SERVER_PIN=()
[ -n "$SERVER_CPUS" ] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
WRK_PIN=()
[ -n "$WRK_CPUS" ] && WRK_PIN=(taskset -c "$WRK_CPUS")

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }

# --- Redis ------------------------------------------------------------------------

REDIS_PORT=$("${HELPER[@]}" port)
"${SERVER_PIN[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli ping >/dev/null || { echo "error: redis-server did not start" >&2; cat "$TMP/redis.log" >&2; exit 1; }
STORE=redis://127.0.0.1:$REDIS_PORT

echo "== machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(redis-server --version | cut -d' ' -f1-3); servers on CPU ${SERVER_CPUS:-any}, wrk on CPU ${WRK_CPUS:-any}; shoal --threads $THREADS"

"${HELPER[@]}" hashes "$HASHES" "$TMP/hashes" "shoal-redis-bench-$$-"
HASHFILE=$TMP/hashes

# start_shoal STORE : one instance; appends its PID to PIDS, sets URL.
start_shoal() {
    local log=$TMP/shoal-$RANDOM.log port=
    env -u RUST_LOG "${SERVER_PIN[@]}" "$SHOAL" tracker --listen 127.0.0.1:0 --no-udp \
        --threads "$THREADS" --store "$1" 2>"$log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$log" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "error: shoal tracker did not start:" >&2; cat "$log" >&2; exit 1; }
    URL=http://127.0.0.1:$port/announce
    INSTANCE_PIDS+=("$pid")
}

stop_instances() {
    local p keep=()
    for p in "${INSTANCE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        case " ${INSTANCE_PIDS[*]} " in *" $p "*) ;; *) keep+=("$p") ;; esac
    done
    PIDS=("${keep[@]}")
}

# stat URL KEY : a number from the instance's /stats.json (KEY as a
# Python expression over s).
stat() {
    python3 -c 'import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1]))
print(eval(sys.argv[2]))' "${1%/announce}/stats.json" "$2"
}

# run NAME ROUND : fresh instances, warm-up, timed run; appends requests/s
# to $TMP/NAME.rps and round trips per announce to $TMP/NAME.rt.
run() {
    local name=$1 round=$2 urls=() url
    INSTANCE_PIDS=()
    case $name in
    memory) start_shoal memory; urls=("$URL") ;;
    redis-1) rcli flushall >/dev/null; start_shoal "$STORE"; urls=("$URL") ;;
    redis-2) rcli flushall >/dev/null; start_shoal "$STORE"; urls=("$URL"); start_shoal "$STORE"; urls+=("$URL") ;;
    esac
    local conns=$((CONNS / ${#urls[@]}))
    if [ "$round" = 1 ]; then
        for url in "${urls[@]}"; do
            printf '  %-8s sample announces (the 2nd peer of each swarm must be told of the 1st): ' "$name"
            "${HELPER[@]}" verify "$url" "$HASHFILE" 20
        done
    fi
    local i=0
    for url in "${urls[@]}"; do
        "${WRK_PIN[@]}" wrk -t1 -c"$conns" -d"${WARMUP}s" -s "$HERE/announce.lua" "$url" \
            -- "$HASHFILE" keepalive check >"$TMP/$name.warm.$i" 2>&1 &
        WRKS+=($!)
        i=$((i + 1))
    done
    wait_wrk "$name.warm"
    i=0
    for url in "${urls[@]}"; do
        local good bad
        read -r good bad < <(sed -n 's/^CHECK good=\([0-9]*\) bad=\([0-9]*\)$/\1 \2/p' "$TMP/$name.warm.$i") || true
        if [ -z "${good:-}" ] || [ "$good" -eq 0 ] || [ "${bad:-1}" -gt 0 ]; then
            echo "FAIL: $name warm-up on $url: ${good:-0} good replies, ${bad:-?} bad" >&2
            grep CHECK "$TMP/$name.warm.$i" >&2 || cat "$TMP/$name.warm.$i" >&2
            exit 1
        fi
        i=$((i + 1))
    done
    local a0=0 c0=0 a1=0 c1=0
    for url in "${urls[@]}"; do
        a0=$((a0 + $(stat "$url" 's["announces_total"]')))
        [ "$name" = memory ] || c0=$((c0 + $(stat "$url" 's["redis"]["calls_total"]')))
    done
    [ "$name" = memory ] || rcli config resetstat >/dev/null
    i=0
    for url in "${urls[@]}"; do
        "${WRK_PIN[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" -s "$HERE/announce.lua" "$url" \
            -- "$HASHFILE" keepalive >"$TMP/$name.wrk.$i" 2>&1 &
        WRKS+=($!)
        i=$((i + 1))
    done
    wait_wrk "$name.wrk"
    local evalsha=0 inside=""
    if [ "$name" != memory ]; then
        evalsha=$(rcli info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p')
        inside=$(rcli info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_evalsha" && $1 !~ /config|info/ { sub("cmdstat_", "", $1); printf "%s %s, ", $1, $3 }')
    fi
    for url in "${urls[@]}"; do
        a1=$((a1 + $(stat "$url" 's["announces_total"]')))
        [ "$name" = memory ] || c1=$((c1 + $(stat "$url" 's["redis"]["calls_total"]')))
        local fails
        fails=$(stat "$url" 's["failures_total"]')
        [ "$fails" = 0 ] || { echo "FAIL: $name: $fails failure replies on $url" >&2; exit 1; }
    done
    local rps=0 r
    i=0
    for url in "${urls[@]}"; do
        r=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/$name.wrk.$i")
        grep -q 'Non-2xx' "$TMP/$name.wrk.$i" && { echo "FAIL: $name: non-2xx replies" >&2; cat "$TMP/$name.wrk.$i" >&2; exit 1; }
        rps=$(awk -v a="$rps" -v b="$r" 'BEGIN { printf "%.0f", a + b }')
        i=$((i + 1))
    done
    stop_instances
    echo "$rps" >>"$TMP/$name.rps"
    local ann=$((a1 - a0))
    if [ "$name" = memory ]; then
        printf '  round %d %-8s %8d announces/s\n' "$round" "$name" "$rps"
    else
        awk -v e="$evalsha" -v a="$ann" -v c=$((c1 - c0)) 'BEGIN { printf "%.3f %.3f\n", e / a, c / a }' >>"$TMP/$name.rt"
        printf '  round %d %-8s %8d announces/s; per announce: %s EVALSHA, %s store round trips (instances'"'"' count)\n' \
            "$round" "$name" "$rps" "$(awk -v e="$evalsha" -v a="$ann" 'BEGIN { printf "%.3f", e / a }')" \
            "$(awk -v c=$((c1 - c0)) -v a="$ann" 'BEGIN { printf "%.3f", c / a }')"
        if [ "$round" = 1 ]; then
            echo "           run inside Redis by the script (no round trips): ${inside%, }"
        fi
    fi
}

# wait_wrk PREFIX : waits for the wrk processes in WRKS (outputs in
# $TMP/PREFIX.*).
WRKS=()
wait_wrk() {
    local j
    for j in "${WRKS[@]}"; do
        wait "$j" || { echo "FAIL: wrk failed ($1)" >&2; cat "$TMP/$1".* >&2; exit 1; }
    done
    WRKS=()
}

CONFIGS=(memory redis-1 redis-2)
echo "== $ROUNDS rounds of ${DURATION}s each (after ${WARMUP}s checked warm-ups), $CONNS keep-alive connections in all"
for round in $(seq "$ROUNDS"); do
    n=${#CONFIGS[@]}
    for k in $(seq 0 $((n - 1))); do
        run "${CONFIGS[$(((k + round - 1) % n))]}" "$round"
    done
done

echo
echo "== summary (medians of $ROUNDS rounds)"
M=$(median <"$TMP/memory.rps")
R1=$(median <"$TMP/redis-1.rps")
R2=$(median <"$TMP/redis-2.rps")
RT1=$(awk '{ print $1 }' "$TMP/redis-1.rt" | median)
RT2=$(awk '{ print $1 }' "$TMP/redis-2.rt" | median)
OWN=$(awk '{ print $2 }' "$TMP/redis-1.rt" "$TMP/redis-2.rt" | median)
printf '  %-34s %8.0f announces/s\n' "one instance, in memory" "$M"
printf '  %-34s %8.0f announces/s  (%.2f x memory)\n' "one instance on Redis" "$R1" "$(awk -v a="$R1" -v b="$M" 'BEGIN { print a / b }')"
printf '  %-34s %8.0f announces/s  (%.2f x one on Redis)\n' "two instances on one Redis" "$R2" "$(awk -v a="$R2" -v b="$R1" 'BEGIN { print a / b }')"
printf '  Redis round trips per announce: %s (one instance), %s (two); the instances count %s\n' "$RT1" "$RT2" "$OWN"
printf '  chihaya'"'"'s Redis store: 5 (plain announce), 6 (started), 7 (completed) by its code\n'
awk -v r="$RT1" 'BEGIN { if (r <= 1.0) print "  PASS: one round trip per announce"; else print "  MISS: more than one round trip per announce" }'
