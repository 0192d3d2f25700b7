//! Percentiles, what a process costs (from /proc), the machine, and the table.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((q / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Self {
            n: v.len(),
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// CPU seconds used so far and peak resident memory of a process (or a process tree).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on Linux).
const TICKS: f64 = 100.0;

fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').map_or(stat.as_str(), |(_, rest)| rest);
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn status_kib(pid: u32, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} for {pid}"))
}

impl ProcStat {
    pub fn of(pid: u32) -> Result<Self> {
        let fields = stat_fields(pid)?;
        // After the name: state(0) ppid(1) ... utime(11) stime(12).
        let ticks: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
        Ok(Self {
            cpu_secs: ticks / TICKS,
            peak_rss_mib: status_kib(pid, "VmHWM:").unwrap_or(0.0) / 1024.0,
        })
    }

    /// A process and its children (PostgreSQL's backends): CPU summed, the largest peak.
    pub fn tree(pid: u32) -> Result<Self> {
        let mut total = Self::of(pid)?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fields) = stat_fields(child) else { continue };
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
                && let Ok(stat) = Self::of(child)
            {
                total.cpu_secs += stat.cpu_secs;
                total.peak_rss_mib = total.peak_rss_mib.max(stat.peak_rss_mib);
            }
        }
        Ok(total)
    }
}

pub fn rss_mib(pid: u32) -> Result<f64> {
    Ok(status_kib(pid, "VmRSS:")? / 1024.0)
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "model": model,
        "kernel": kernel.trim(),
    })
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>, higher_is_better: bool) -> String {
    match (ours, theirs) {
        (Some(o), Some(t)) if o > 0.0 && t > 0.0 => {
            let r = if higher_is_better { o / t } else { t / o };
            format!("{r:.2}x")
        }
        _ => "n/a".to_owned(),
    }
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.digits$}"))
}

/// The markdown table: our figure, BullMQ's from the same run, and the ratio (above 1 is
/// better for us).
pub fn table(doc: &Value) -> String {
    let r = &doc["results"];
    let peer = &r["bullmq"];
    let mut rows: Vec<[String; 4]> = Vec::new();
    for run in r["throughput"].as_array().into_iter().flatten() {
        let (mode, workers, c) = (
            run["mode"].as_str().unwrap_or(""),
            run["workers"].as_u64().unwrap_or(0),
            run["concurrency"].as_u64().unwrap_or(0),
        );
        let ours = num(&run["jobs_per_sec"]);
        // BullMQ ran one worker process; its scenario names say what it measured.
        let theirs = if workers == 1 {
            num(&peer["throughput"][format!("e2e_{mode}_c{c}")])
        } else {
            None
        };
        rows.push([
            format!("{mode} throughput, {workers} worker(s), c={c} (jobs/s)"),
            cell(ours, 0),
            cell(theirs, 0),
            ratio(ours, theirs, true),
        ]);
    }
    for run in r["submit_latency"].as_array().into_iter().flatten() {
        let rate = run["rate"].as_u64().unwrap_or(0);
        let ours = num(&run["latency_ms"]["p99"]);
        let theirs = if rate == peer["latency"]["rate"].as_u64().unwrap_or(0) {
            num(&peer["latency"]["add_ms"]["p99"])
        } else {
            None
        };
        rows.push([
            format!("submit p99 at {rate}/s, open loop (ms; BullMQ: add())"),
            cell(ours, 2),
            cell(theirs, 2),
            ratio(ours, theirs, false),
        ]);
    }
    let lat = &r["latency"];
    for (name, ours_key, theirs_key) in [
        ("submit -> start", "submit_to_start_ms", "to_start_ms"),
        ("submit -> SUCCEEDED", "submit_to_succeeded_ms", "to_complete_ms"),
    ] {
        for q in ["p50", "p99"] {
            let ours = num(&lat[ours_key][q]);
            let theirs = num(&peer["latency"][theirs_key][q]);
            rows.push([
                format!("{name} {q} at {}/s (ms)", lat["rate"].as_u64().unwrap_or(0)),
                cell(ours, 2),
                cell(theirs, 2),
                ratio(ours, theirs, false),
            ]);
        }
    }
    let mut out = String::from(
        "| figure | mediamesh (PostgreSQL fsync + JetStream) | BullMQ (Redis AOF everysec) | ratio |\n| --- | ---: | ---: | ---: |\n",
    );
    for row in rows {
        out.push_str(&format!("| {} | {} | {} | {} |\n", row[0], row[1], row[2], row[3]));
    }
    out
}
