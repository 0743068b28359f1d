#!/usr/bin/env bash
# Soak (issue #15): one `shoal seed` for DURATION seconds (default 1800)
# with honest leechers coming and going (LEECHERS at once, TOTAL in all) and
# HOSTILE hostile peers of ten kinds (silent, idle, stalling, choke floods,
# garbage, huge lengths, bad requests, have floods, bad extension messages,
# keep-alive floods), each from its own 127.x address and reconnecting when
# dropped. Prints whether every honest download completed identical, the
# seed's RSS over the run, and anything written outside the output
# directories; exits 1 if any of that fails.
#
#   DURATION=1800 LEECHERS=4 TOTAL=40 HOSTILE=20 SIZE_MB=32 bench/soak.sh
set -euo pipefail
# Loopback runs: no DHT (its default routers are on the internet).
export SHOAL_NO_DHT=1
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 bench/soak/soak.py "$PWD/target/release/shoal" "$dir"
