#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) with cargo-fuzz (libFuzzer,
# AddressSanitizer), installing cargo-fuzz and the nightly toolchain when missing.
# A crash stops the run and leaves its input in fuzz/artifacts/<target>/; the corpus grows
# in fuzz/corpus/<target>/ (both git-ignored), starting from fuzz/seeds/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_EACH=${1:-60}
shift || true

command -v rustup >/dev/null || { echo "fuzz: rustup is needed for the nightly toolchain" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd "$ROOT/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${SECONDS_EACH}s" >&2
    mkdir -p "corpus/$t"
    # New inputs go to corpus/<t>; seeds/<t> (committed: real openssl-made messages) is
    # read as a starting point.
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$SECONDS_EACH" -max_len=16384
done
