#!/usr/bin/env bash
# Does shoal's memory grow with the torrent's size? Runs bench/download.sh
# (shoal and libtorrent from a libtorrent seed, then shoal -> shoal) once per
# size in SIZES and prints, per size, shoal's peak RSS and the medians and
# ratio of that run; then a PASS/MISS line: shoal's peak RSS at the largest
# size at most GROWTH_MIB above the smallest's.
#
# Usage: bench/download-scale.sh
#   env: SIZES="1024 10240" (MiB) REPS=1 PIECE_KB=1024 LT_SEED (as download.sh)
#        CLIENTS="shoal libtorrent" DATA_DIR=/tmp/shoal-bench
#        KEEP=0 (1: keep source files over 1 GiB in DATA_DIR; they are deleted
#          by default, a 10 GiB one included)
#
# The source files are random data (like download.sh's); 10 GiB needs ~10 GiB
# free in DATA_DIR for the source plus as much for each download (deleted
# after each run). Each size gets its own full download.sh run: its output is
# kept in DATA_DIR/scale-SIZE.log.
set -euo pipefail

SIZES=${SIZES:-1024 10240}
export REPS=${REPS:-1}
export CLIENTS=${CLIENTS:-shoal libtorrent}
export DATA_DIR=${DATA_DIR:-/tmp/shoal-bench}
KEEP=${KEEP:-0}
GROWTH_MIB=4

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$DATA_DIR"

need_mb=0
for s in $SIZES; do [ "$s" -gt "$need_mb" ] && need_mb=$s; done
avail_mb=$(df -Pm "$DATA_DIR" | awk 'NR == 2 { print $4 }')
if [ "$avail_mb" -lt $((2 * need_mb + 1024)) ]; then
    echo "error: $DATA_DIR has $avail_mb MiB free; the ${need_mb} MiB case needs $((2 * need_mb + 1024))" >&2
    exit 1
fi

declare -A RSS T_SHOAL T_LT RATIO T_S2S
for s in $SIZES; do
    log=$DATA_DIR/scale-$s.log
    echo "== SIZE_MB=$s: bench/download.sh (REPS=$REPS, CLIENTS=\"$CLIENTS\"${PIECE_KB:+, PIECE_KB=$PIECE_KB}), output in $log"
    rc=0
    SIZE_MB=$s "$ROOT/bench/download.sh" >"$log" 2>&1 || rc=$?
    sed -n '/^== summary/,$p' "$log" | sed 's/^/   /'
    if [ "$KEEP" != 1 ] && [ "$s" -gt 1024 ]; then
        rm -f "$DATA_DIR/big-${s}M.bin"
    fi
    [ "$rc" -eq 0 ] || { echo "error: download.sh failed for SIZE_MB=$s (exit $rc)" >&2; exit 1; }
    RSS[$s]=$(sed -n 's/.*shoal peak RSS <= [0-9]* MiB  (\([0-9.]*\) MiB.*/\1/p' "$log")
    T_SHOAL[$s]=$(sed -n 's/^  shoal  *median *\([0-9.]*\) s.*/\1/p' "$log")
    T_LT[$s]=$(sed -n 's/^  libtorrent  *median *\([0-9.]*\) s.*/\1/p' "$log")
    T_S2S[$s]=$(sed -n 's/^  shoal->shoal  *median *\([0-9.]*\) s.*/\1/p' "$log")
    RATIO[$s]=$(sed -n 's/^  ratio shoal \/ libtorrent: *\([0-9.n\/a]*\).*/\1/p' "$log")
done

echo
echo "== shoal's peak RSS by size (${PIECE_KB:-1024} KiB pieces; the most over its downloads from libtorrent and from shoal)"
printf '  %8s  %14s  %9s  %13s  %15s  %8s\n' "MiB" "shoal peak RSS" "shoal" "libtorrent" "shoal->shoal" "ratio"
for s in $SIZES; do
    printf '  %8s  %10s MiB  %7s s  %11s s  %13s s  %8s\n' "$s" "${RSS[$s]:-?}" "${T_SHOAL[$s]:-?}" "${T_LT[$s]:-?}" "${T_S2S[$s]:-?}" "${RATIO[$s]:-?}"
done
read -r first _ <<<"$SIZES"
last=${SIZES##* }
if [ "$first" != "$last" ] && [ -n "${RSS[$first]:-}" ] && [ -n "${RSS[$last]:-}" ]; then
    ok=$(awk -v a="${RSS[$first]}" -v b="${RSS[$last]}" -v g="$GROWTH_MIB" 'BEGIN { print (b <= a + g) ? 1 : 0 }')
    v=MISS
    [ "$ok" = 1 ] && v=PASS
    echo "$v: shoal's peak RSS does not grow with the size  (${first} MiB: ${RSS[$first]} MiB, ${last} MiB: ${RSS[$last]} MiB; allowed growth $GROWTH_MIB MiB)"
fi
