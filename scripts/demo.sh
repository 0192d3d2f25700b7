#!/usr/bin/env bash
# The main job: runs the whole mesh locally (its own nats-server and PostgreSQL under
# .mediamesh/demo), uploads the photos, audio and video in ../shared/fixtures/media, and
# prints every job, its state and its outputs (thumbnails, waveforms, video frames and
# previews, probe results). The mesh stops when the jobs have ended.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p meshctl
fixtures=../shared/fixtures/media
meshctl=target/release/meshctl
data=.mediamesh/demo
rm -rf "$data"
export MM_ADDR=http://127.0.0.1:50051
# meshctl dev writes the dev tenant's API key and the admin token into its data dir.
export MM_API_KEY_FILE="$data/api-key"
"$meshctl" dev --data-dir "$data" --log warn &
dev=$!
trap 'kill -TERM $dev 2>/dev/null || true; wait $dev 2>/dev/null || true' EXIT
"$meshctl" health --wait 120
status=0
"$meshctl" upload --watch "$fixtures"/*.jpg "$fixtures"/*.png "$fixtures"/*.wav "$fixtures"/*.mp3 \
  "$fixtures"/*.ogg "$fixtures"/*.mp4 || status=$?
echo
"$meshctl" stats
kill -TERM "$dev"
wait "$dev" || true
trap - EXIT
exit "$status"
