#!/usr/bin/env bash
# mesh-bench: no-op jobs through the whole mesh (nats-server, PostgreSQL with fsync, the four
# services as processes), with BullMQ on Redis (AOF everysec) in the same run when node and
# redis-server are here. Arguments go to mesh-bench (--help lists them).
#   bench/mesh.sh                      # everything (about 10 minutes)
#   bench/mesh.sh --n 5000 --rate-seconds 3 --bullmq skip    # quick look
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v redis-server >/dev/null || apt-get install -y -qq redis-server >/dev/null
# --all-targets: the same features as the test build (scripts/test.sh), so neither rebuilds the other.
cargo build --release --workspace --all-targets
exec target/release/mesh-bench "$@"
