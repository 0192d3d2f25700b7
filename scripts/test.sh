#!/usr/bin/env bash
# Runs every test: formatting, lints, then the whole suite (unit, end-to-end and fault tests
# over real nats-server and PostgreSQL processes the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
phase() { echo "test.sh: $1 done at $((SECONDS - started)) s" >&2; }
scripts/setup.sh --browser
phase setup
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
phase clippy
# One build for the binaries (the fault tests in tests/e2e/faults.rs run them as separate
# processes) and the tests, with the same features, so nextest does not build again.
cargo build --release --workspace --all-targets
phase build
cargo nextest run --release --workspace --profile ci
phase tests
