#!/usr/bin/env bash
# Memory per torrent: one `shoal seed` process seeding N idle torrents
# (no peers) versus one seeding a single torrent; prints the resident set
# size of each once it listens and has settled, and the difference per
# added torrent.
#
#   N          torrents in the big run (default 100)
#   SIZE_KB    size of each torrent's one file (default 256)
#   TRACKER=1  give every torrent a tracker (a local `shoal tracker`), so
#              each one also announces
set -euo pipefail
# Loopback runs: no DHT (its default routers are on the internet).
export SHOAL_NO_DHT=1
cd "$(dirname "$0")/.."
N=${N:-100}
SIZE_KB=${SIZE_KB:-256}
TRACKER=${TRACKER:-0}

cargo build --release --quiet
SHOAL=$PWD/target/release/shoal
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

announce=()
if [ "$TRACKER" = 1 ]; then
  "$SHOAL" tracker --listen 127.0.0.1:0 2> "$dir/tracker.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$dir/tracker.log" && break; sleep 0.1; done
  addr=$(grep -o 'listening on [0-9.:]*' "$dir/tracker.log" | head -1 | cut -d' ' -f3)
  announce=(-a "http://$addr/announce")
fi

mkdir -p "$dir/data" "$dir/torrents" "$dir/one"
for i in $(seq "$N"); do
  head -c $((SIZE_KB * 1024)) /dev/urandom > "$dir/data/file$i.bin"
  "$SHOAL" create "$dir/data/file$i.bin" "${announce[@]}" -l 15 -o "$dir/torrents/t$i.torrent" > /dev/null
done
cp "$dir/torrents/t1.torrent" "$dir/one/"

# RSS in KiB of a seed of the torrents in $1, once it listens and a
# few seconds have passed (announces done, buffers settled).
rss_of() {
  local log="$dir/seed.log"
  "$SHOAL" seed --data "$dir/data" "$1" --port 0 --bind 127.0.0.1 2> "$log" &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 600); do grep -q "listening on" "$log" && break; sleep 0.1; done
  grep -q "listening on" "$log" || { echo "seed did not start:"; cat "$log"; exit 1; }
  sleep 3
  local kb
  kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$kb"
}

one=$(rss_of "$dir/one")
many=$(rss_of "$dir/torrents")
per=$(( (many - one) / (N - 1) ))
echo "seed, 1 torrent:        RSS $one KiB"
echo "seed, $N torrents:      RSS $many KiB"
echo "per added idle torrent: $per KiB (tracker: $TRACKER, $SIZE_KB KiB each)"
