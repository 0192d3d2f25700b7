#!/usr/bin/env bash
# Runs every test: formatting, lints, then the whole suite (unit, end-to-end and fault tests
# over real nats-server and PostgreSQL processes the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# One build for the binaries (the fault tests in tests/e2e/faults.rs run them as separate
# processes) and the tests, with the same features, so nextest does not build again.
cargo build --release --workspace --all-targets
cargo nextest run --release --workspace --profile ci
