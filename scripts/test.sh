#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, builds SPIRE
# and the workspace, then runs every test. This is the README's test command (`make test`)
# and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
scripts/build-spire.sh
scripts/build-kubernetes.sh

cargo fmt --all -- --check
# Integration tests drive the real binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
