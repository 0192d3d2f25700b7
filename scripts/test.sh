#!/usr/bin/env bash
# Runs every test: formatting, lints, then the whole suite (unit, end-to-end and fault tests
# over real nats-server and PostgreSQL processes the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The fault tests (tests/e2e/faults.rs) run the service binaries as separate processes.
cargo build --release --workspace --bins
cargo nextest run --release --workspace --profile ci
