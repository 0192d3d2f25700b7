//! The BullMQ peer of `../shared/bench/peers/bullmq/`, run in the same invocation: its own
//! redis-server with AOF everysec on a free port, the peer's `bench.mjs` with the scenarios we
//! compare against, its JSON lines read back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::Args;

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/peers/bullmq")
}

async fn found(program: &str) -> bool {
    tokio::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A copy of the peer with its pinned packages installed (kept between runs).
async fn prepare(work: &Path) -> Result<()> {
    let source = peer_dir();
    std::fs::create_dir_all(work)?;
    for entry in std::fs::read_dir(&source).with_context(|| format!("reading {}", source.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".mjs") || name.starts_with("package") {
            std::fs::copy(entry.path(), work.join(&*name))?;
        }
    }
    if !work.join("node_modules/bullmq").exists() {
        eprintln!("mesh-bench: npm ci in {}", work.display());
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(work)
            .status()
            .await?;
        if !status.success() {
            // npm 11 refuses the peer's lock file for platform packages it lists differently
            // ("Missing: @msgpackr-extract/...-darwin-arm64 from lock file"); package.json pins
            // the exact versions (bullmq 6.7.0, ioredis 6.0.0), so install those instead.
            eprintln!("mesh-bench: npm ci refused the lock file; npm install of the pinned versions");
            let status = tokio::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                .current_dir(work)
                .status()
                .await?;
            if !status.success() {
                bail!("npm ci and npm install failed in {}", work.display());
            }
        }
    }
    Ok(())
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
}

pub async fn run(args: &Args, stamp: &str) -> Result<Value> {
    if !found("node").await || !found("redis-server").await {
        bail!("node or redis-server is missing (apt-get install -y nodejs redis-server)");
    }
    let work = PathBuf::from("target/bench-results/bullmq-peer");
    prepare(&work).await?;
    let port = mediamesh_localsvc::free_port()?;
    let data = tempfile::Builder::new().prefix("mesh-bench-redis-").tempdir()?;
    let mut redis = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
        ])
        .arg("--dir")
        .arg(data.path())
        .args(["--daemonize", "no", "--logfile"])
        .arg(data.path().join("redis.log"))
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    let mut ready = false;
    for _ in 0..100 {
        if redis_ping(port).await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!("redis-server did not answer on port {port}");
    }
    let out = std::env::current_dir()?.join(format!("target/bench-results/bullmq-{stamp}.jsonl"));
    let mut only = vec!["enqueue_seq:keep".to_owned(), "latency:keep".to_owned()];
    for c in &args.concurrency {
        only.push(format!("e2e_preenqueued_c{c}:keep"));
        only.push(format!("e2e_concurrent_c{c}:keep"));
    }
    eprintln!("mesh-bench: BullMQ (redis-server AOF everysec on {port})");
    let status = tokio::process::Command::new("node")
        .arg("bench.mjs")
        .args(["--label", "aof-everysec", "--reps", "1"])
        .args(["--n", &args.n.to_string()])
        .args(["--lat-rate", &args.latency_rate.to_string()])
        .args(["--lat-seconds", &args.latency_seconds.to_string()])
        .args(["--only", &only.join(",")])
        .arg("--out")
        .arg(&out)
        .env("REDIS_PORT", port.to_string())
        .current_dir(&work)
        .status()
        .await?;
    let _ = redis.kill().await;
    if !status.success() {
        bail!("bench.mjs failed");
    }
    let text = std::fs::read_to_string(&out)?;
    let mut throughput = serde_json::Map::new();
    let mut latency = Value::Null;
    let mut enqueue = Value::Null;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line)?;
        if !row["error"].is_null() || row["variant"] != "keep" {
            continue;
        }
        let scenario = row["scenario"].as_str().unwrap_or("");
        if scenario.starts_with("e2e_") {
            throughput.insert(scenario.to_owned(), row["jobsPerSec"].clone());
        } else if scenario.starts_with("latency") {
            latency = json!({
                "rate": row["rate"], "add_ms": row["addCallMs"],
                "to_start_ms": row["enqToStartMs"], "to_complete_ms": row["enqToCompleteMs"],
                "disturbed": row["contaminated"],
            });
        } else if scenario == "enqueue_seq" {
            enqueue = json!({ "jobs_per_sec": row["jobsPerSec"], "add_ms": row["addLatencyMs"] });
        }
    }
    Ok(
        json!({ "mode": "aof-everysec", "throughput": throughput, "latency": latency,
               "enqueue_seq": enqueue, "raw": out.display().to_string() }),
    )
}
