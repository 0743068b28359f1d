#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), one after the other,
# starting from the committed seeds (fuzz/seeds/<target>/) and growing a
# scratch corpus (fuzz/corpus/<target>/, ignored by git). Any crash, panic
# or failed assertion fails the run; its input is in fuzz/artifacts/<target>/
# and libFuzzer prints it in base64. Needs the nightly toolchain; installs
# cargo-fuzz when missing. Extra arguments go to libFuzzer, e.g.
#   fuzz/run.sh 600 -runs=10000000
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# cargo fuzz has no --locked: check fuzz/Cargo.lock is up to date first.
cargo +nightly fetch --locked --target "$(rustc +nightly -vV | sed -n "s/^host: //p")"
cargo +nightly fuzz build

failed=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "$@" \
      2>"corpus/$target.log"; then
    tail -n 60 "corpus/$target.log"
    failed+=("$target")
  fi
  summary=$(grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units)' "corpus/$target.log" \
    | tr -s ' \n' ' ' || true)
  echo "fuzz:   ${summary:-no statistics (see above)}"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: every target ran ${seconds}s without a failure"
