//! What the process costs: CPU time (all threads) and peak resident memory.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// User + system CPU time of the whole process (every thread, also those that have exited), in
/// milliseconds with microsecond resolution.
pub fn cpu_ms() -> Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(micros as f64 / 1000.0)
}

/// Peak resident set size of this process so far (`VmHWM` of `/proc/self/status`), in MiB.
pub fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            let kib: f64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing {line:?}"))?;
            return Ok(kib / 1024.0);
        }
    }
    bail!("no VmHWM in /proc/self/status")
}

/// Wall and CPU milliseconds of one call.
pub struct Timed<T> {
    pub value: T,
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<Timed<T>> {
    let cpu0 = cpu_ms()?;
    let t0 = Instant::now();
    let value = f()?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let cpu_ms = cpu_ms()? - cpu0;
    Ok(Timed { value, wall_ms, cpu_ms })
}

/// Median of the values (mean of the two middle ones for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Rounded to one decimal, as the peers' script prints.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounded to `digits` decimals.
pub fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
