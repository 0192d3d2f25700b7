//! Benchmark of the thumbnail pipeline (`mediamesh_imaging::thumbnails`) against the peers of
//! `shared/bench/peers/thumbs` (sharp, vipsthumbnail). Prints JSON lines shaped like the peers'
//! script, so `bench/thumbs.sh` can put both in one table (`report`).
//!
//! ```text
//! mediamesh-bench thumbs [--runs 10] [--warmup 1] [--out DIR] PHOTO...   latency, CPU, decode floor, peak RSS
//! mediamesh-bench thumbs-once [--out DIR] PHOTO                           one run, prints its own peak RSS
//! mediamesh-bench throughput [--workers 2] [--iters 2] PHOTO...           images/s of N worker processes
//! mediamesh-bench report DIR                                               markdown table from a run's JSON lines
//! ```

mod report;
mod sys;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mediamesh_imaging::{Derivative, Limits, OutputFormat, ThumbOptions};
use serde_json::{Value, json};

use crate::sys::{max, median, min, round_to, round1, timed};

const TOOL: &str = "mediamesh";

#[derive(Parser)]
#[command(name = "mediamesh-bench", about = "Thumbnail pipeline benchmark against its peers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per photo: wall and CPU time of thumbnails() over the runs (one thread), the decode
    /// floor, output sizes, and the peak RSS of a separate process doing that photo once.
    Thumbs {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Write the derivatives of the last run here as `<stem>_<name>.jpg`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Skip the per-photo child process that measures peak RSS.
        #[arg(long)]
        no_rss: bool,
        /// Output formats instead of the default `jpeg` (e.g. `jpeg,jpeg` encodes every
        /// derivative twice: the difference to the default run is the encoding cost).
        #[arg(long, value_delimiter = ',')]
        formats: Vec<String>,
        /// Make only the derivatives with these names (default: all of ThumbOptions::default()).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Decode every bit (ThumbOptions::all_bits): what skipping the last-bit scans of
        /// near-lossless progressive JPEGs gains.
        #[arg(long)]
        all_bits: bool,
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// thumbnails() once on one photo, then print this process's peak RSS (VmHWM).
    ThumbsOnce {
        #[arg(long)]
        out: Option<PathBuf>,
        photo: PathBuf,
    },
    /// Images per second of `workers` processes, each doing every photo `iters` times.
    Throughput {
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 2)]
        iters: usize,
        /// Decode every bit (ThumbOptions::all_bits).
        #[arg(long)]
        all_bits: bool,
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// One worker of `throughput` (a child process).
    #[command(hide = true)]
    Loop {
        #[arg(long, default_value_t = 2)]
        iters: usize,
        #[arg(long)]
        all_bits: bool,
        #[arg(required = true)]
        photos: Vec<PathBuf>,
    },
    /// Markdown table and goal checks from the JSON lines (*.jsonl) of a run directory.
    Report { dir: PathBuf },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Thumbs {
            runs,
            warmup,
            out,
            no_rss,
            formats,
            only,
            all_bits,
            photos,
        } => {
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let mut opts = ThumbOptions {
                all_bits,
                ..ThumbOptions::default()
            };
            if !formats.is_empty() {
                opts.formats = formats
                    .iter()
                    .map(|f| OutputFormat::parse(f).with_context(|| format!("unknown format {f:?}")))
                    .collect::<Result<_>>()?;
            }
            if !only.is_empty() {
                opts.specs.retain(|spec| only.contains(&spec.name));
                if opts.specs.is_empty() {
                    bail!("--only {only:?} matches no derivative");
                }
            }
            // The peak RSS child runs the default options: only measure it for those.
            let rss = !no_rss && opts == ThumbOptions::default();
            for photo in &photos {
                let line = bench_photo(photo, &opts, runs, warmup, out.as_deref(), rss)?;
                emit(&line)?;
            }
            Ok(())
        }
        Cmd::ThumbsOnce { out, photo } => thumbs_once(&photo, out.as_deref()),
        Cmd::Throughput {
            workers,
            iters,
            all_bits,
            photos,
        } => throughput(workers, iters, all_bits, &photos),
        Cmd::Loop {
            iters,
            all_bits,
            photos,
        } => worker_loop(iters, all_bits, &photos),
        Cmd::Report { dir } => {
            let markdown = report::render(&dir)?;
            print!("{markdown}");
            Ok(())
        }
    }
}

/// Prints one JSON line and flushes, so a pipe sees it at once.
fn emit(value: &Value) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")?;
    stdout.flush()?;
    Ok(())
}

fn read_photo(photo: &Path) -> Result<Vec<u8>> {
    std::fs::read(photo).with_context(|| format!("reading {}", photo.display()))
}

fn file_name(photo: &Path) -> String {
    photo
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| photo.display().to_string())
}

fn make_thumbs(data: &[u8], opts: &ThumbOptions, limits: &Limits) -> Result<Vec<Derivative>> {
    Ok(mediamesh_imaging::thumbnails(data, opts, limits, &mut |_| {})?)
}

/// `{"thumb":[w,h,bytes],...}` as the peers print it.
fn outputs_json(derivatives: &[Derivative]) -> Value {
    let mut map = serde_json::Map::new();
    for d in derivatives {
        map.insert(d.name.clone(), json!([d.width, d.height, d.data.len()]));
    }
    Value::Object(map)
}

fn write_outputs(dir: &Path, photo: &Path, derivatives: &[Derivative]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = photo
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "photo".to_owned());
    for d in derivatives {
        let path = dir.join(format!("{stem}_{}.{}", d.name, d.format.extension()));
        std::fs::write(&path, &d.data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn bench_photo(
    photo: &Path,
    opts: &ThumbOptions,
    runs: usize,
    warmup: usize,
    out: Option<&Path>,
    rss: bool,
) -> Result<Value> {
    let data = read_photo(photo)?;
    let limits = Limits::default();
    let info = mediamesh_imaging::probe(&data, &limits)?;

    let mut walls = Vec::with_capacity(runs);
    let mut cpus = Vec::with_capacity(runs);
    // Per run, the time to the first progress call (it comes once the decode is done) and the
    // rest: where the time goes, from the public API alone. (The two largest derivatives are
    // resized while the decode runs, so the first part is not the decode alone.)
    let mut stages: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut last = Vec::new();
    // The decode floor (decoding at the scale thumbnails() picks, and nothing else) is measured
    // in the same loop, one call after each thumbnails() call, so both see the same load.
    let mut floors = Vec::with_capacity(runs);
    let mut decoded_at = (0, 0);
    for run in 0..warmup + runs {
        let floor = timed(|| Ok(mediamesh_imaging::decode_only(&data, opts, &limits)?))?;
        decoded_at = floor.value;
        let mut marks = Vec::with_capacity(4);
        let start = Instant::now();
        let t = timed(|| {
            let mut on_progress = |_: f32| marks.push(start.elapsed().as_secs_f64() * 1000.0);
            Ok(mediamesh_imaging::thumbnails(&data, opts, &limits, &mut on_progress)?)
        })?;
        if run >= warmup {
            floors.push(floor.wall_ms);
            walls.push(t.wall_ms);
            cpus.push(t.cpu_ms);
            let decoded = marks.first().copied().unwrap_or(t.wall_ms);
            stages[0].push(decoded);
            stages[1].push(t.wall_ms - decoded);
        }
        last = t.value;
    }
    let mut stage_ms = serde_json::Map::new();
    for (name, values) in ["decode", "derivatives"].into_iter().zip(&stages) {
        stage_ms.insert(name.to_owned(), json!(round1(median(values))));
    }
    if let Some(dir) = out {
        write_outputs(dir, photo, &last)?;
    }

    let wall = median(&walls);
    let floor = median(&floors);
    let mut line = json!({
        "tool": TOOL,
        "file": file_name(photo),
        "runs": runs,
        "median_ms": round1(wall),
        "min_ms": round1(min(&walls)),
        "max_ms": round1(max(&walls)),
        "cpu_median_ms": round1(median(&cpus)),
        "outputs": outputs_json(&last),
        "decode_floor_ms": round1(floor),
        "decode_floor_min_ms": round1(min(&floors)),
        "decoded_at": [decoded_at.0, decoded_at.1],
        "floor_ratio": if floor > 0.0 { round_to(wall / floor, 2) } else { 0.0 },
        "after_decode_ms": round1(wall - floor),
        "stages_ms": Value::Object(stage_ms),
        "source": [info.width, info.height],
        "display": [info.display_width, info.display_height],
        "orientation": info.exif.orientation,
        "source_bytes": data.len(),
    });
    if rss {
        line["peak_rss_mib"] = json!(child_peak_rss(photo)?);
    }
    Ok(line)
}

/// Peak RSS of a fresh process doing this one photo once, so each photo's peak is its own.
fn child_peak_rss(photo: &Path) -> Result<f64> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let output = Command::new(exe)
        .arg("thumbs-once")
        .arg(photo)
        .stderr(Stdio::inherit())
        .output()
        .context("running thumbs-once")?;
    if !output.status.success() {
        bail!("thumbs-once {} failed: {}", photo.display(), output.status);
    }
    let line: Value = serde_json::from_slice(&output.stdout).context("parsing thumbs-once output")?;
    line["peak_rss_mib"]
        .as_f64()
        .context("thumbs-once printed no peak_rss_mib")
}

fn thumbs_once(photo: &Path, out: Option<&Path>) -> Result<()> {
    let data = read_photo(photo)?;
    let t = timed(|| make_thumbs(&data, &ThumbOptions::default(), &Limits::default()))?;
    if let Some(dir) = out {
        write_outputs(dir, photo, &t.value)?;
    }
    emit(&json!({
        "tool": TOOL,
        "file": file_name(photo),
        "peak_rss_mib": round1(sys::peak_rss_mib()?),
        "wall_ms": round1(t.wall_ms),
        "cpu_ms": round1(t.cpu_ms),
    }))
}

fn worker_loop(iters: usize, all_bits: bool, photos: &[PathBuf]) -> Result<()> {
    let opts = ThumbOptions {
        all_bits,
        ..ThumbOptions::default()
    };
    let limits = Limits::default();
    let t = timed(|| {
        let mut images = 0usize;
        for _ in 0..iters {
            for photo in photos {
                // Read every time, as the peers' loop does.
                let data = read_photo(photo)?;
                make_thumbs(&data, &opts, &limits)?;
                images += 1;
            }
        }
        Ok(images)
    })?;
    emit(&json!({
        "tool": TOOL,
        "images": t.value,
        "secs": round_to(t.wall_ms / 1000.0, 3),
        "cpu_secs": round_to(t.cpu_ms / 1000.0, 3),
    }))
}

/// `workers` processes (as the peers' script runs two node processes), each over every photo
/// `iters` times; images per second of the whole group, from the first start to the last exit.
fn throughput(workers: usize, iters: usize, all_bits: bool, photos: &[PathBuf]) -> Result<()> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(workers);
    for _ in 0..workers {
        let child = Command::new(&exe)
            .arg("loop")
            .arg("--iters")
            .arg(iters.to_string())
            .args(all_bits.then_some("--all-bits"))
            .args(photos)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker")?;
        children.push(child);
    }
    let mut images = 0u64;
    let mut cpu_secs = 0.0;
    for child in children {
        let output = child.wait_with_output().context("waiting for a worker")?;
        if !output.status.success() {
            bail!("a worker failed: {}", output.status);
        }
        let line: Value = serde_json::from_slice(&output.stdout).context("parsing a worker's output")?;
        images += line["images"].as_u64().context("worker printed no images")?;
        cpu_secs += line["cpu_secs"].as_f64().context("worker printed no cpu_secs")?;
    }
    let secs = t0.elapsed().as_secs_f64();
    emit(&json!({
        "tool": TOOL,
        "all_bits": all_bits,
        "workers": workers,
        "images": images,
        "img_per_s": round_to(images as f64 / secs, 2),
        "secs": round_to(secs, 3),
        "cpu_secs": round_to(cpu_secs, 3),
    }))
}
