#!/usr/bin/env bash
# The thumbnail benchmark in one run: our pipeline (mediamesh-imaging, driven by mediamesh-bench)
# and its peers (../shared/bench/peers/thumbs: sharp as the reference design used it, sharp
# decoding once, vipsthumbnail) on the same photos in the same session; then peak RSS of the
# peers, SSIM of every tool's medium and large outputs against vipsthumbnail's and against an
# independent ffmpeg Lanczos reference, and the markdown table with the goals.
#
#   bench/thumbs.sh [PHOTO...]        default: every JPEG in ../shared/fixtures/media
#   RUNS=3 WARMUP=1 bench/thumbs.sh   fewer runs (default RUNS=10 WARMUP=1)
#
# Raw JSON lines, the derivatives of every tool, the references and the table go to
# target/bench-results/<UTC timestamp>/; the table also goes to bench/results/latest.md.
# The peers' script installs sharp (npm) and Debian's libvips-tools when they are missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=$(cd "$ROOT/../shared/bench/peers/thumbs" && pwd)
FIX=${FIXTURES:-$ROOT/../shared/fixtures/media}
RUNS=${RUNS:-10} WARMUP=${WARMUP:-1}
ITERS=2 WORKERS=2 # as the peers' throughput (run-peers.sh: two processes, --iters 2)

photos=("$@")
[ ${#photos[@]} -gt 0 ] || photos=("$FIX"/*.jpg)
for i in "${!photos[@]}"; do
  photos[$i]=$(cd "$(dirname "${photos[$i]}")" && pwd)/$(basename "${photos[$i]}")
done

for tool in ffmpeg node /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
RES=$ROOT/target/bench-results/$stamp
OUT=$RES/out
mkdir -p "$OUT"/{mediamesh,vipsthumbnail-cli-c1,sharp-c1,sharp-once-c1,ref}
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
loadavg() { printf -- '  - %s (%s UTC): %s\n' "$1" "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/load.md"; }

step "build (cargo build --release --workspace --all-targets: the test build's features, so nothing is rebuilt twice)"
(cd "$ROOT" && cargo build --release --workspace --all-targets)
# Run a private copy: others may rebuild target/release while this runs.
BENCH=$RES/mediamesh-bench
cp "$ROOT/target/release/mediamesh-bench" "$BENCH"

# Order: our latency, the peers' latency and throughput (run-peers.sh), vipsthumbnail's
# throughput, our throughput: the four throughput measurements run back to back.
loadavg "start"
step "mediamesh: latency, decode floor, peak RSS (RUNS=$RUNS WARMUP=$WARMUP)"
"$BENCH" thumbs --runs "$RUNS" --warmup "$WARMUP" --out "$OUT/mediamesh" "${photos[@]}" | tee "$RES/ours.jsonl"
loadavg "after our latency run"

step "peers: $PEERS/run-peers.sh (RUNS=$RUNS WARMUP=$WARMUP)"
RUNS=$RUNS WARMUP=$WARMUP "$PEERS/run-peers.sh" "${photos[@]}" | tee "$RES/peers.jsonl"
loadavg "after the peers (latency, then sharp's throughput)"

step "peers: vipsthumbnail throughput, $WORKERS processes"
t0=$(date +%s.%N)
pids=()
for ((w = 0; w < WORKERS; w++)); do
  VIPS_CONCURRENCY=1 "$PEERS/vips_cli.sh" loop "$ITERS" "${photos[@]}" >/dev/null &
  pids+=($!)
done
wait "${pids[@]}"
t1=$(date +%s.%N)
awk -v n=$((WORKERS * ITERS * ${#photos[@]})) -v w=$WORKERS -v t0="$t0" -v t1="$t1" \
  'BEGIN { printf "{\"tool\":\"vipsthumbnail-cli-c1\",\"workers\":%d,\"images\":%d,\"img_per_s\":%.2f,\"secs\":%.3f}\n", w, n, n / (t1 - t0), t1 - t0 }' |
  tee "$RES/peers-extra.jsonl"

step "mediamesh: throughput, $WORKERS processes"
"$BENCH" throughput --workers "$WORKERS" --iters "$ITERS" "${photos[@]}" | tee -a "$RES/ours.jsonl"
loadavg "after the throughput runs"

# Peak RSS of the peers, one process per photo (run-peers.sh does not measure it), and their
# outputs for SSIM: the same settings as run-peers.sh / vips_cli.sh.
step "peers: peak RSS and outputs"
tf=$(mktemp)
trap 'rm -f "$tf"' EXIT
peak_kib() { /usr/bin/time -f %M -o "$tf" "$@" >/dev/null && tail -n1 "$tf"; }
rss_line() { awk -v t="$1" -v f="$2" -v k="$3" 'BEGIN { printf "{\"tool\":\"%s\",\"file\":\"%s\",\"peak_rss_mib\":%.1f}\n", t, f, k / 1024 }'; }
: >"$RES/rss.jsonl"
for f in "${photos[@]}"; do
  name=$(basename "$f") stem=$(basename "$f" .jpg)
  for once in 0 1; do
    tool=sharp-c1
    [ $once = 1 ] && tool=sharp-once-c1
    kib=$(SHARP_CONCURRENCY=1 SHARP_ONCE=$once peak_kib node "$PEERS/sharp_bench.js" bench --runs 1 --warmup 0 --out "$OUT/$tool" "$f")
    rss_line "$tool" "$name" "$kib" >>"$RES/rss.jsonl"
  done
  vout=$OUT/vipsthumbnail-cli-c1
  export VIPS_CONCURRENCY=1
  k1=$(peak_kib vipsthumbnail "$f" -s 150x150 -m centre -o "$vout/${stem}_thumb.jpg[Q=85,strip]")
  k2=$(peak_kib vipsthumbnail "$f" -s '800x600>' -o "$vout/${stem}_medium.jpg[Q=85,strip]")
  k3=$(peak_kib vipsthumbnail "$f" -s '1920x1080>' -o "$vout/${stem}_large.jpg[Q=85,strip]")
  unset VIPS_CONCURRENCY
  rss_line vipsthumbnail-cli-c1 "$name" "$(printf '%s\n' "$k1" "$k2" "$k3" | sort -n | tail -n1)" >>"$RES/rss.jsonl"
done
cat "$RES/rss.jsonl"

# SSIM "All" of ffmpeg's ssim filter, both images in one format: YCbCr 4:2:0 full range (what
# libvips and sharp write; All = (4·Y + Cb + Cr) / 6), so a 4:4:4 output gains nothing from its
# extra chroma and the reference PNG is compared like a JPEG. "null" when the sizes differ.
ssim() {
  local v
  v=$(ffmpeg -hide_banner -nostats -i "$1" -i "$2" \
    -lavfi "[0:v]format=yuvj420p[a];[1:v]format=yuvj420p[b];[a][b]ssim" -f null - 2>&1 |
    sed -n 's/.*All:\([0-9.]*\).*/\1/p' | tail -n1)
  echo "${v:-null}"
}
# ffmpeg applies EXIF orientation only to video, so the reference is turned upright here.
rotation() {
  case "$(vipsheader -f orientation "$1" 2>/dev/null || echo 1)" in
    2) echo "hflip," ;; 3) echo "hflip,vflip," ;; 4) echo "vflip," ;;
    5) echo "transpose=0," ;; 6) echo "transpose=1," ;; 7) echo "transpose=3," ;; 8) echo "transpose=2," ;;
    *) echo "" ;;
  esac
}

step "SSIM against vipsthumbnail and against an ffmpeg Lanczos reference"
: >"$RES/ssim.jsonl"
for f in "${photos[@]}"; do
  name=$(basename "$f") stem=$(basename "$f" .jpg)
  rot=$(rotation "$f")
  for size in medium large; do
    vips=$OUT/vipsthumbnail-cli-c1/${stem}_$size.jpg
    w=$(vipsheader -f width "$vips") h=$(vipsheader -f height "$vips")
    ref=$OUT/ref/${stem}_$size.png
    ffmpeg -v error -y -noautorotate -i "$f" \
      -vf "${rot}scale=$w:$h:flags=lanczos+accurate_rnd+full_chroma_int+full_chroma_inp,format=rgb24" \
      -frames:v 1 "$ref"
    for tool in mediamesh vipsthumbnail-cli-c1 sharp-c1 sharp-once-c1; do
      img=$OUT/$tool/${stem}_$size.jpg
      [ -f "$img" ] || continue
      vs_vips=1
      [ $tool = vipsthumbnail-cli-c1 ] || vs_vips=$(ssim "$img" "$vips")
      printf '{"tool":"%s","file":"%s","size":"%s","vs_vips":%s,"vs_ref":%s}\n' \
        "$tool" "$name" "$size" "$vs_vips" "$(ssim "$img" "$ref")" | tee -a "$RES/ssim.jsonl"
    done
  done
done
loadavg "end"

sharp_version=$(node -p "require('$PEERS/node_modules/sharp/package.json').version" 2>/dev/null || echo "?")
libvips_sharp=$(node -p "require('$PEERS/node_modules/sharp').versions.vips" 2>/dev/null || echo "?")
{
  echo "## Thumbnails: mediamesh against its peers, $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "- machine: $(nproc) vCPU ($(lscpu | sed -n 's/^Model name: *//p' | head -n1)), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, $(uname -sr)"
  echo "- RUNS=$RUNS WARMUP=$WARMUP per photo, one thread; throughput: $WORKERS processes × $ITERS passes over the ${#photos[@]} photos"
  echo "- mediamesh: $(cd "$ROOT" && rustc --version | cut -d' ' -f1-2), release; sharp $sharp_version (libvips $libvips_sharp); $(vips --version 2>/dev/null | head -n1) (vipsthumbnail, Debian); ffmpeg $(ffmpeg -version | head -n1 | cut -d' ' -f3)"
  echo "- load average (1/5/15 min); other work on the machine was not stopped:"
  cat "$RES/load.md"
  echo "- raw data: target/bench-results/$stamp/"
} >"$RES/env.md"

"$BENCH" report "$RES" >"$RES/table.md"
mkdir -p "$ROOT/bench/results"
cp "$RES/table.md" "$ROOT/bench/results/latest.md"
cat "$RES/table.md"
step "done: $RES/table.md, bench/results/latest.md"
