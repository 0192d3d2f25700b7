//! mesh-bench: what a job costs on the whole mesh, measured through its public gRPC API, with
//! BullMQ (Redis, AOF everysec) measured in the same run when node and redis-server are here.
//!
//! The mesh is the real one: nats-server, PostgreSQL (fsync on) and the four services as
//! separate processes, started the way the fault tests start them, running `noop` jobs
//! (`MM_ENABLE_NOOP=true`). See bench/README.md.

mod bullmq;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_testkit::process::{Process, ProcessMesh};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::stats::{Percentiles, ProcStat};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mesh-bench",
    about = "No-op jobs through the whole mesh, beside BullMQ in the same run"
)]
struct Args {
    /// Jobs per throughput run
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Offered rates (jobs/s) for the open-loop submit latency runs
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000")]
    rates: Vec<u32>,
    /// Seconds per submit-latency rate
    #[arg(long, default_value_t = 10)]
    rate_seconds: u64,
    /// Rate (jobs/s) and seconds of the submit -> start / SUCCEEDED latency run
    #[arg(long, default_value_t = 500)]
    latency_rate: u32,
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Jobs in flight per worker process in the throughput runs
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<u32>,
    /// Worker processes in the throughput runs
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Run BullMQ beside us: auto (when node and redis-server are here), skip
    #[arg(long, default_value = "auto")]
    bullmq: String,
    /// Jobs in the memory run (scheduler RSS sampled every tenth; 0: no memory run)
    #[arg(long, default_value_t = 0)]
    soak: usize,
    /// Where the JSON goes (default target/bench-results/mesh-<UTC stamp>.json)
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A no-op job with a payload like the BullMQ peer's (about 210 bytes).
fn spec(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        kind: "noop".to_owned(),
        payload_json: json!({
            "mediaId": format!("med_{i:012}"),
            "kind": "thumbnail",
            "tenant": "bench",
            "source": format!("s3://bench-bucket/uploads/{i:012}/original.jpg"),
            "params": {"width": 320, "height": 240, "fit": "cover", "quality": 85},
            "i": i,
        })
        .to_string(),
        ..Default::default()
    }
}

struct Bench {
    mesh: ProcessMesh,
    store: mediamesh_store::Store,
    channel: Channel,
    media_workers: usize,
}

impl Bench {
    async fn start(media_workers: usize) -> Result<Self> {
        let mut mesh = ProcessMesh::launch_durable_with(media_workers, |env| {
            // Production settings, not the tests' fast timers; warnings only (a log line per
            // job is a cost of its own, measured separately by whoever wants info logs).
            for process in env.processes() {
                if let Some(vars) = env.of_mut(process) {
                    for key in [
                        "MM_REDISPATCH_AFTER_SECS",
                        "MM_RETRY_BASE_MS",
                        "MM_RETRY_CAP_MS",
                        "MM_ACK_WAIT_MS",
                        "MM_ENABLE_TEST_KINDS",
                    ] {
                        vars.remove(key);
                    }
                }
            }
            env.set_all("MM_LOG", "warn");
            env.set_all("MM_ENABLE_NOOP", "true");
            // One tenant sends everything as fast as it can: no quotas in the way.
            for key in [
                "MM_QUOTA_JOBS_PER_HOUR",
                "MM_QUOTA_JOBS_PER_DAY",
                "MM_QUOTA_SUBMITS_PER_SECOND",
            ] {
                env.ingest.insert(key.to_owned(), "0".to_owned());
            }
        })
        .await?;
        for i in 0..media_workers {
            mesh.stop(Process::Media(i)).await?;
        }
        let store = mediamesh_store::Store::connect_lazy(&mesh.database_url, 4)?;
        let channel = mesh.channel(Process::Ingest)?;
        Ok(Self {
            mesh,
            store,
            channel,
            media_workers,
        })
    }

    fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    /// Starts `workers` media workers, each running `concurrency` jobs at once.
    async fn workers(&mut self, workers: usize, concurrency: u32) -> Result<()> {
        if workers > self.media_workers {
            bail!("only {} media workers were launched", self.media_workers);
        }
        for i in 0..self.media_workers {
            if self.mesh.is_running(Process::Media(i)) {
                self.mesh.stop(Process::Media(i)).await?;
            }
        }
        self.mesh.env.set_media("MM_WORKER_CONCURRENCY", concurrency);
        for i in 0..workers {
            self.mesh.start(Process::Media(i)).await?;
        }
        Ok(())
    }

    async fn stop_workers(&mut self) -> Result<()> {
        for i in 0..self.media_workers {
            if self.mesh.is_running(Process::Media(i)) {
                self.mesh.stop(Process::Media(i)).await?;
            }
        }
        Ok(())
    }

    /// Deletes every job, so that each run starts from empty tables.
    /// Waits until no job is left unfinished (the workers drain what the last phase left), then
    /// empties the jobs table: each phase starts on an idle mesh.
    async fn reset(&self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM scheduler.jobs WHERE state IN ('QUEUED', 'SCHEDULED', 'RUNNING')",
            )
            .fetch_one(self.store.pool())
            .await?;
            if unfinished == 0 {
                break;
            }
            if Instant::now() >= until {
                bail!("{unfinished} jobs still unfinished after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sqlx::query("TRUNCATE scheduler.jobs, scheduler.job_events, scheduler.attempts CASCADE")
            .execute(self.store.pool())
            .await?;
        sqlx::query("VACUUM ANALYZE scheduler.jobs")
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Submits `n` jobs in SubmitJobs calls of 100, one call at a time.
    async fn submit_bulk(&self, n: usize, from: usize) -> Result<()> {
        let mut ingest = self.ingest();
        let mut i = from;
        while i < from + n {
            let count = 100.min(from + n - i);
            let jobs = (i..i + count).map(spec).collect();
            ingest
                .submit_jobs(pb::SubmitJobsRequest { jobs })
                .await
                .context("SubmitJobs")?;
            i += count;
        }
        Ok(())
    }

    /// Waits until the `n` jobs submitted (every submit has returned) have SUCCEEDED; then the
    /// time of the last one's end. Retention prunes finished jobs beyond MM_RETAIN_SUCCEEDED
    /// (10,000) a tenant, so "none left unfinished" counts as done as well.
    async fn wait_succeeded(&self, n: usize, deadline: Duration) -> Result<chrono::DateTime<chrono::Utc>> {
        let until = Instant::now() + deadline;
        loop {
            let (done, failed, unfinished, last): (i64, i64, i64, Option<chrono::DateTime<chrono::Utc>>) =
                sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE state = 'SUCCEEDED'), count(*) FILTER (WHERE state = 'FAILED'), \
                       count(*) FILTER (WHERE state IN ('QUEUED', 'SCHEDULED', 'RUNNING')), \
                       max(finished_at) FROM scheduler.jobs",
                )
                .fetch_one(self.store.pool())
                .await?;
            if failed > 0 {
                bail!("{failed} no-op jobs FAILED");
            }
            if done as usize >= n || (done > 0 && unfinished == 0) {
                return last.context("no finish time");
            }
            if Instant::now() > until {
                bail!("only {done} of {n} jobs SUCCEEDED within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pids(&self) -> BTreeMap<String, u32> {
        let mut pids = BTreeMap::new();
        let mut processes = vec![Process::Ingest, Process::Scheduler];
        processes.extend((0..self.media_workers).map(Process::Media));
        for process in processes {
            if let Some(pid) = self.mesh.pid(process) {
                pids.insert(process.to_string(), pid);
            }
        }
        if let Some(pid) = self.mesh.postgres.pid() {
            pids.insert("postgres".to_owned(), pid);
        }
        if let Some(pid) = self.mesh.nats.pid() {
            pids.insert("nats-server".to_owned(), pid);
        }
        pids
    }

    /// CPU seconds per process (PostgreSQL: the postmaster and all its backends).
    fn cpu(&self) -> BTreeMap<String, ProcStat> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| {
                let stat = if name == "postgres" {
                    ProcStat::tree(pid)
                } else {
                    ProcStat::of(pid)
                };
                stat.ok().map(|s| (name, s))
            })
            .collect()
    }
}

/// CPU seconds per 10,000 jobs and peak RSS of each process between two readings.
fn costs(before: &BTreeMap<String, ProcStat>, after: &BTreeMap<String, ProcStat>, jobs: usize) -> Value {
    let mut out = serde_json::Map::new();
    for (name, end) in after {
        let start = before.get(name).map_or(0.0, |s| s.cpu_secs);
        out.insert(
            name.clone(),
            json!({
                "cpu_secs_per_10k": (end.cpu_secs - start) * 10_000.0 / jobs.max(1) as f64,
                "peak_rss_mib": end.peak_rss_mib,
            }),
        );
    }
    Value::Object(out)
}

/// Open loop: job k is sent at t0 + k / rate whatever happened to the earlier ones; its
/// latency counts from that planned time, so a slow answer cannot hide the queue behind it.
async fn open_loop(
    bench: &Bench,
    rate: u32,
    seconds: u64,
    from: usize,
) -> Result<(Percentiles, f64, std::collections::BTreeMap<String, usize>)> {
    let n = rate as usize * seconds as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    // Failed submits by their stable code and gRPC status, e.g. "UNAVAILABLE (Unavailable)".
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new()));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..n {
        let planned = t0 + interval * k as u32;
        tokio::time::sleep_until(planned).await;
        let mut ingest = bench.ingest();
        let latencies = Arc::clone(&latencies);
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let result = ingest
                .submit_job(pb::SubmitJobRequest {
                    job: Some(spec(from + k)),
                })
                .await;
            let ms = planned.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(_) => {
                    if let Ok(mut l) = latencies.lock() {
                        l.push(ms);
                    }
                }
                Err(status) => {
                    let code = mediamesh_core::ErrorCode::from_status(&status);
                    let key = format!("{code} ({:?})", status.code());
                    if let Ok(mut e) = errors.lock() {
                        *e.entry(key).or_default() += 1;
                    }
                }
            }
        });
    }
    let issued = t0.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok((Percentiles::of(&latencies), n as f64 / issued, errors))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/bench-results/mesh-{stamp}.json")));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let max_workers = args.workers.iter().copied().max().unwrap_or(1);
    eprintln!("mesh-bench: starting nats-server, PostgreSQL and the services ({max_workers} media workers)");
    let mut bench = Bench::start(max_workers).await?;
    let mut results = serde_json::Map::new();
    let mut next = 0usize;

    // Warm-up: connections, prepared statements, JIT-free but caches all the same.
    bench.workers(1, 16).await?;
    bench.submit_bulk(2_000, next).await?;
    next += 2_000;
    bench.wait_succeeded(2_000, Duration::from_secs(120)).await?;
    bench.reset().await?;

    // 1. Submit -> start and submit -> SUCCEEDED at a fixed rate, idle workers (c=16), on a
    //    mesh that has seen no overload yet.
    bench.reset().await?;
    let sampler = std::env::var_os("MESH_BENCH_TRACE").map(|_| {
        let pool = bench.store.pool().clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                let row: Result<(i64, i64, i64), _> = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE state IN ('QUEUED', 'SCHEDULED')), \
                       count(*) FILTER (WHERE state = 'RUNNING'), count(*) FILTER (WHERE state = 'SUCCEEDED') \
                     FROM scheduler.jobs",
                )
                .fetch_one(&pool)
                .await;
                if let Ok((waiting, running, done)) = row {
                    eprintln!(
                        "{:>6} ms: waiting {waiting} running {running} succeeded {done}",
                        t0.elapsed().as_millis()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let (p, achieved, _) = open_loop(&bench, args.latency_rate, args.latency_seconds, next).await?;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let n = args.latency_rate as usize * args.latency_seconds as usize;
    next += n;
    bench.wait_succeeded(n, Duration::from_secs(300)).await?;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM a.started_at - j.created_at)::float8 * 1000, \
           extract(epoch FROM j.finished_at - j.created_at)::float8 * 1000 \
         FROM scheduler.jobs j JOIN scheduler.attempts a ON a.job_id = j.id AND a.attempt = j.attempt",
    )
    .fetch_all(bench.store.pool())
    .await?;
    let to_start = Percentiles::of(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let to_done = Percentiles::of(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
    eprintln!(
        "at {}/s: submit p99 {:.2} ms; submit -> start p50/p99 {:.2}/{:.2} ms; -> SUCCEEDED p50/p99 {:.2}/{:.2} ms",
        args.latency_rate, p.p99, to_start.p50, to_start.p99, to_done.p50, to_done.p99
    );
    results.insert(
        "latency".to_owned(),
        json!({ "rate": args.latency_rate, "achieved_rate": achieved, "submit_ms": p,
                "submit_to_start_ms": to_start,
                "submit_to_succeeded_ms": to_done }),
    );

    // 2. Submit latency at fixed offered rates (workers draining with 16 in flight).
    let mut submit = Vec::new();
    for &rate in &args.rates {
        bench.reset().await?;
        let (p, achieved, errors) = open_loop(&bench, rate, args.rate_seconds, next).await?;
        next += rate as usize * args.rate_seconds as usize;
        let failed: usize = errors.values().sum();
        eprintln!(
            "submit at {rate}/s: p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms ({achieved:.0}/s offered, {failed} errors{})",
            p.p50,
            p.p95,
            p.p99,
            p.max,
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {errors:?}")
            }
        );
        submit.push(json!({
            "rate": rate,
            "achieved_rate": achieved,
            "errors": failed,
            "errors_by_code": errors,
            "latency_ms": p,
        }));
    }
    results.insert("submit_latency".to_owned(), Value::Array(submit));

    // 3. Throughput, pre-enqueued and with submit running concurrently.
    let mut throughput = Vec::new();
    for &workers in &args.workers {
        for &concurrency in &args.concurrency {
            for concurrent in [false, true] {
                bench.reset().await?;
                bench.stop_workers().await?;
                let before;
                let t0;
                if concurrent {
                    bench.workers(workers, concurrency).await?;
                    before = bench.cpu();
                    t0 = chrono::Utc::now();
                    bench.submit_bulk(args.n, next).await?;
                } else {
                    bench.submit_bulk(args.n, next).await?;
                    before = bench.cpu();
                    t0 = chrono::Utc::now();
                    bench.workers(workers, concurrency).await?;
                }
                next += args.n;
                let end = bench.wait_succeeded(args.n, Duration::from_secs(600)).await?;
                // Worker processes restart per run: their CPU counts from zero.
                let after = bench.cpu();
                let secs = (end - t0).as_seconds_f64();
                let rate = args.n as f64 / secs;
                let mode = if concurrent { "concurrent" } else { "preenqueued" };
                eprintln!("{mode} workers={workers} c={concurrency}: {rate:.0} jobs/s");
                throughput.push(json!({
                    "mode": mode, "workers": workers, "concurrency": concurrency, "jobs": args.n,
                    "seconds": secs, "jobs_per_sec": rate, "processes": costs(&before, &after, args.n),
                }));
            }
        }
    }
    results.insert("throughput".to_owned(), Value::Array(throughput));

    // 4. Memory over a long run: the scheduler's RSS after each tenth.
    if args.soak > 0 {
        bench.reset().await?;
        bench.workers(1, 16).await?;
        let mut samples = Vec::new();
        let step = (args.soak / 10).max(1);
        let mut done = 0;
        while done < args.soak {
            bench.submit_bulk(step, next).await?;
            next += step;
            done += step;
            bench.wait_succeeded(done, Duration::from_secs(600)).await?;
            let rss: BTreeMap<String, f64> = bench
                .pids()
                .into_iter()
                .filter_map(|(name, pid)| stats::rss_mib(pid).ok().map(|r| (name, r)))
                .collect();
            eprintln!("{done} jobs: {rss:?}");
            samples.push(json!({ "jobs": done, "rss_mib": rss }));
        }
        results.insert("memory".to_owned(), Value::Array(samples));
    }
    if std::env::var_os("MESH_BENCH_PG_STATS").is_some() {
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(bench.store.pool())
            .await;
        let top: Vec<(String, i64, f64)> = sqlx::query_as(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 150), calls, total_exec_time \
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25",
        )
        .fetch_all(bench.store.pool())
        .await
        .unwrap_or_default();
        for (q, calls, ms) in top {
            eprintln!("{ms:>10.0} ms {calls:>8} calls  {q}");
        }
    }
    bench.stop_workers().await?;
    bench.mesh.shutdown().await?;

    // 5. BullMQ in the same run.
    let peer = match args.bullmq.as_str() {
        "skip" => None,
        _ => match bullmq::run(&args, &stamp).await {
            Ok(peer) => Some(peer),
            Err(err) => {
                eprintln!("mesh-bench: BullMQ not run: {err:#}");
                None
            }
        },
    };
    if let Some(peer) = &peer {
        results.insert("bullmq".to_owned(), peer.clone());
    }
    let document = json!({
        "stamp": stamp,
        "machine": stats::machine(),
        "settings": { "n": args.n, "rate_seconds": args.rate_seconds, "latency_rate": args.latency_rate,
                      "latency_seconds": args.latency_seconds },
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&document)?)?;
    println!("{}", stats::table(&document));
    eprintln!("mesh-bench: JSON in {}", out.display());
    Ok(())
}
