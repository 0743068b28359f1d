#!/usr/bin/env bash
# Benchmark `shoal create` against mktorrent and transmission-create on one
# big random file (hot page cache), and against the physical limit set by
# SHA-1 throughput: size / (cores x one core's SHA-1 rate).
#
# Usage: bench/create.sh            (env: SIZE_MB=1024 RUNS=5)
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-5}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=$ROOT/target/release/shoal

echo "== building shoal (release)"
(cd "$ROOT" && cargo build --release --quiet)

if ! command -v mktorrent >/dev/null; then
    echo "error: mktorrent is required (for the ratio and the info hash check)" >&2
    exit 1
fi
HAVE_TC=1
if ! command -v transmission-create >/dev/null; then
    echo "note: transmission-create not installed; skipping it"
    HAVE_TC=0
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
FILE=$TMP/data.bin

echo "== making a ${SIZE_MB} MiB random file in $TMP"
if command -v openssl >/dev/null; then
    # AES-CTR keystream: random-looking and much faster than /dev/urandom.
    openssl enc -aes-128-ctr -pass pass:x -nosalt -pbkdf2 </dev/zero 2>/dev/null \
        | head -c "$((SIZE_MB * 1024 * 1024))" >"$FILE" || true
else
    head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$FILE"
fi
SIZE=$(stat -c %s "$FILE")
if [ "$SIZE" -ne "$((SIZE_MB * 1024 * 1024))" ]; then
    echo "error: test file is $SIZE bytes, expected $((SIZE_MB * 1024 * 1024))" >&2
    exit 1
fi

echo "== warming the page cache"
cat "$FILE" >/dev/null

now() { date +%s.%N; }

# run_tool NAME OUT CMD... : time one run, append the wall time to $TMP/NAME.times
run_tool() {
    local name=$1 out=$2
    shift 2
    rm -f "$out"
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1 || { echo "error: $name failed: $*" >&2; exit 1; }
    t1=$(now)
    [ -s "$out" ] || { echo "error: $name wrote no torrent" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>"$TMP/$name.times"
}

TOOLS=(shoal mktorrent)
[ "$HAVE_TC" = 1 ] && TOOLS+=(transmission-create)

echo "== timing $RUNS interleaved runs of: ${TOOLS[*]}"
for ((r = 1; r <= RUNS; r++)); do
    run_tool shoal "$TMP/shoal.torrent" \
        "$SHOAL" create -l 20 -d -f -o "$TMP/shoal.torrent" "$FILE"
    run_tool mktorrent "$TMP/mktorrent.torrent" \
        mktorrent -l 20 -d -o "$TMP/mktorrent.torrent" "$FILE"
    if [ "$HAVE_TC" = 1 ]; then
        run_tool transmission-create "$TMP/tc.torrent" \
            transmission-create -s 1024 -o "$TMP/tc.torrent" "$FILE"
    fi
    line="  run $r:"
    for t in "${TOOLS[@]}"; do line+=" $t $(tail -n1 "$TMP/$t.times")s"; done
    echo "$line"
done

median() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.4f", m }'; }

info_hash() {
    "$SHOAL" show --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["info_hash"])'
}

H_SHOAL=$(info_hash "$TMP/shoal.torrent")
H_MK=$(info_hash "$TMP/mktorrent.torrent")
if [ "$H_SHOAL" != "$H_MK" ]; then
    echo "FAIL: info hashes differ: shoal $H_SHOAL, mktorrent $H_MK" >&2
    exit 1
fi

echo "== SHA-1 speed of one core (openssl speed -evp sha1, 1 MiB blocks, best of 3)"
# The last line looks like: "sha1            974127.10k" (1000s of bytes/s).
# This machine is noisy, so take the best of three measurements.
SHA_KBS=$(for _ in 1 2 3; do
    openssl speed -evp sha1 -bytes 1048576 -seconds 2 2>/dev/null \
        | awk '$1 == "sha1" { v = $NF } END { sub(/k$/, "", v); print v }'
done | sort -g | tail -n1)
if [ -z "$SHA_KBS" ]; then
    echo "error: could not parse openssl speed output" >&2
    exit 1
fi
CORES=$(nproc)

M_SHOAL=$(median "$TMP/shoal.times")
M_MK=$(median "$TMP/mktorrent.times")
M_TC=
[ "$HAVE_TC" = 1 ] && M_TC=$(median "$TMP/transmission-create.times")

echo
echo "file: $SIZE bytes (${SIZE_MB} MiB), piece length 1 MiB, $RUNS runs, $CORES cores, page cache warm"
echo "info hash (shoal == mktorrent): $H_SHOAL"
printf 'median wall time  shoal:               %8.4f s  (%.0f MB/s)\n' "$M_SHOAL" "$(awk -v s="$SIZE" -v t="$M_SHOAL" 'BEGIN { print s / t / 1e6 }')"
printf 'median wall time  mktorrent:           %8.4f s  (%.0f MB/s)\n' "$M_MK" "$(awk -v s="$SIZE" -v t="$M_MK" 'BEGIN { print s / t / 1e6 }')"
if [ "$HAVE_TC" = 1 ]; then
    printf 'median wall time  transmission-create: %8.4f s  (%.0f MB/s)\n' "$M_TC" "$(awk -v s="$SIZE" -v t="$M_TC" 'BEGIN { print s / t / 1e6 }')"
fi
awk -v s="$SIZE" -v c="$CORES" -v k="$SHA_KBS" -v sh="$M_SHOAL" -v mk="$M_MK" -v tc="$M_TC" 'BEGIN {
    rate = k * 1000
    limit = s / (c * rate)
    printf "one core SHA-1 (openssl):            %7.0f MB/s\n", rate / 1e6
    printf "physical limit (size/(cores*rate)): %7.4f s\n", limit
    printf "ratio shoal/mktorrent:              %7.3f\n", sh / mk
    if (tc != "") printf "ratio shoal/transmission-create:    %7.3f\n", sh / tc
    printf "ratio shoal/limit:                  %7.3f\n", sh / limit
}'
