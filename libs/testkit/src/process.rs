//! The mesh as separate OS processes, for fault tests: the service binaries
//! (`mediamesh-scheduler`, `mediamesh-ingest`, `mediamesh-media` as one or more workers,
//! `mediamesh-inference`) run as children of the test over a nats-server and a PostgreSQL of
//! their own, configured through `MM_*` variables. Any of them can be SIGKILLed and started
//! again, and nats-server and PostgreSQL restarted on the same port with the same data.
//!
//! The binaries are the ones built next to the test executable (`target/<profile>/`): build
//! them first with `cargo build --release --bins` (`scripts/test.sh` does).
//!
//! Each service logs to `<temp dir>/logs/<name>.log` (appended across restarts). When a test
//! panics with a mesh alive, dropping the mesh prints the tail of every log and keeps the temp
//! dir for inspection (`MM_TEST_KEEP=1` keeps it in any case).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{NatsServer, Postgres, free_port, init_logging};

/// How long a started service gets to report SERVING.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a service gets to drain on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Set (non-empty) to keep the temp dir with logs and data even when the test passes.
pub const KEEP_ENV: &str = "MM_TEST_KEEP";
/// Lines of each log printed when something fails.
const TAIL_LINES: usize = 40;

/// One service process of a [`ProcessMesh`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    Scheduler,
    Ingest,
    /// A media worker; each has its own listen port and log.
    Media(usize),
    Inference,
}

impl Process {
    /// The binary's file name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Scheduler => "mediamesh-scheduler",
            Self::Ingest => "mediamesh-ingest",
            Self::Media(_) => "mediamesh-media",
            Self::Inference => "mediamesh-inference",
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheduler => f.write_str("scheduler"),
            Self::Ingest => f.write_str("ingest"),
            Self::Media(i) => write!(f, "media-{i}"),
            Self::Inference => f.write_str("inference"),
        }
    }
}

/// The `MM_*` environment of each service process; a test may change it before start (or
/// between a kill and the next start: the new values apply to the next start).
#[derive(Clone, Debug, Default)]
pub struct ProcessEnv {
    pub scheduler: BTreeMap<String, String>,
    pub ingest: BTreeMap<String, String>,
    /// One per media worker, `Process::Media(i)` uses `media[i]`.
    pub media: Vec<BTreeMap<String, String>>,
    pub inference: BTreeMap<String, String>,
}

impl ProcessEnv {
    pub fn of(&self, process: Process) -> Option<&BTreeMap<String, String>> {
        match process {
            Process::Scheduler => Some(&self.scheduler),
            Process::Ingest => Some(&self.ingest),
            Process::Media(i) => self.media.get(i),
            Process::Inference => Some(&self.inference),
        }
    }

    pub fn of_mut(&mut self, process: Process) -> Option<&mut BTreeMap<String, String>> {
        match process {
            Process::Scheduler => Some(&mut self.scheduler),
            Process::Ingest => Some(&mut self.ingest),
            Process::Media(i) => self.media.get_mut(i),
            Process::Inference => Some(&mut self.inference),
        }
    }

    /// Sets `key` for every process.
    pub fn set_all(&mut self, key: &str, value: impl fmt::Display) {
        let value = value.to_string();
        for env in [&mut self.scheduler, &mut self.ingest, &mut self.inference]
            .into_iter()
            .chain(self.media.iter_mut())
        {
            env.insert(key.to_owned(), value.clone());
        }
    }

    /// Sets `key` for every media worker.
    pub fn set_media(&mut self, key: &str, value: impl fmt::Display) {
        for env in &mut self.media {
            env.insert(key.to_owned(), value.to_string());
        }
    }

    /// Every process, in start order.
    pub fn processes(&self) -> Vec<Process> {
        let mut all = vec![Process::Scheduler, Process::Ingest];
        all.extend((0..self.media.len()).map(Process::Media));
        all.push(Process::Inference);
        all
    }
}

/// nats-server, PostgreSQL and the four services as child processes.
pub struct ProcessMesh {
    pub nats: NatsServer,
    pub postgres: Postgres,
    /// The services' database (`mediamesh`).
    pub database_url: String,
    pub blob_dir: PathBuf,
    pub env: ProcessEnv,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    children: HashMap<Process, Child>,
    channel: Channel,
    root: Option<tempfile::TempDir>,
}

/// Where the service binaries are: the folder of the test executable's parent
/// (`target/<profile>/deps/..`), or `MM_TEST_BIN_DIR` when set.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MM_TEST_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe
        .parent()
        .ok_or_else(|| anyhow!("test executable {} has no folder", exe.display()))?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

impl ProcessMesh {
    /// Starts servers, scheduler, ingest, `media_workers` media workers and inference with the
    /// default test settings, and waits until each reports SERVING.
    pub async fn launch(media_workers: usize) -> Result<Self> {
        Self::launch_with(media_workers, |_| {}).await
    }

    /// Like [`ProcessMesh::launch`]; `tune` may change each process's environment first.
    pub async fn launch_with(media_workers: usize, tune: impl FnOnce(&mut ProcessEnv)) -> Result<Self> {
        Self::launch_inner(media_workers, false, tune).await
    }

    /// Like [`ProcessMesh::launch_with`], with PostgreSQL flushing every commit to disk as in
    /// production (benchmarks).
    pub async fn launch_durable_with(media_workers: usize, tune: impl FnOnce(&mut ProcessEnv)) -> Result<Self> {
        Self::launch_inner(media_workers, true, tune).await
    }

    async fn launch_inner(media_workers: usize, fsync: bool, tune: impl FnOnce(&mut ProcessEnv)) -> Result<Self> {
        init_logging();
        let bin_dir = bin_dir()?;
        let processes = {
            let mut all = vec![Process::Scheduler, Process::Ingest, Process::Inference];
            all.extend((0..media_workers).map(Process::Media));
            all
        };
        for process in processes {
            let path = bin_dir.join(process.binary());
            if !path.is_file() {
                bail!(
                    "service binary {} is missing: build the binaries first with `cargo build --release --bins` \
                     (scripts/test.sh does), or point MM_TEST_BIN_DIR at them",
                    path.display()
                );
            }
        }
        let root = tempfile::Builder::new().prefix("mediamesh-proc-").tempdir()?;
        let log_dir = root.path().join("logs");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let blob_dir = root.path().join("blobs");
        std::fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
        let (nats, postgres, database_url) = crate::start_servers_with(root.path(), fsync).await?;
        let blob_url = format!("file://{}", blob_dir.display());
        let nats_url = nats.url();
        let addr = || -> Result<String> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)).to_string()) };
        // Services check each other's internal token; the public API trusts mm-tenant here
        // (tests of API keys use the in-process mesh with MM_AUTH=on).
        let internal_token = mediamesh_server::auth::Token::generate();
        // Each process gets its own metrics port: the fixed defaults (9101..9104) would collide.
        let common = |listen: String| -> Result<BTreeMap<String, String>> {
            Ok(BTreeMap::from([
                ("MM_AUTH".to_owned(), "off".to_owned()),
                ("MM_INTERNAL_TOKEN".to_owned(), internal_token.expose().to_owned()),
                ("MM_LISTEN_ADDR".to_owned(), listen),
                ("MM_METRICS_ADDR".to_owned(), addr()?),
                ("MM_HEALTH_INTERVAL_MS".to_owned(), "100".to_owned()),
                (
                    "MM_LOG".to_owned(),
                    "info,sqlx=warn,async_nats=warn,h2=warn,tower=warn,hyper=warn".to_owned(),
                ),
                ("MM_LOG_FORMAT".to_owned(), "text".to_owned()),
            ]))
        };
        let scheduler_addr = addr()?;
        let mut scheduler = common(scheduler_addr.clone())?;
        scheduler.extend(
            [
                ("MM_DATABASE_URL", database_url.as_str()),
                ("MM_NATS_URL", nats_url.as_str()),
                ("MM_BLOB_URL", blob_url.as_str()),
                ("MM_ENABLE_TEST_KINDS", "true"),
                ("MM_REDISPATCH_AFTER_SECS", "2"),
                ("MM_RETRY_BASE_MS", "200"),
                ("MM_RETRY_CAP_MS", "2000"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let inference_addr = addr()?;
        let media_addrs = (0..media_workers).map(|_| addr()).collect::<Result<Vec<_>>>()?;
        let mut ingest = common(addr()?)?;
        ingest.extend(
            [
                ("MM_DATABASE_URL", database_url.as_str()),
                ("MM_BLOB_URL", blob_url.as_str()),
                ("MM_SCHEDULER_ADDR", &format!("http://{scheduler_addr}")),
                ("MM_INFERENCE_ADDR", &format!("http://{inference_addr}")),
                (
                    "MM_MEDIA_ADDR",
                    &media_addrs.first().map(|a| format!("http://{a}")).unwrap_or_default(),
                ),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let mut media = Vec::with_capacity(media_workers);
        for media_addr in media_addrs {
            let mut env = common(media_addr)?;
            env.extend(
                [
                    ("MM_NATS_URL", nats_url.as_str()),
                    ("MM_BLOB_URL", blob_url.as_str()),
                    ("MM_ENABLE_TEST_KINDS", "true"),
                    ("MM_WORKER_CONCURRENCY", "16"),
                    ("MM_ACK_WAIT_MS", "2000"),
                    ("MM_GRACE_MS", "5000"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
            media.push(env);
        }
        let mut inference = common(inference_addr)?;
        inference.extend(
            [
                ("MM_DATABASE_URL", database_url.as_str()),
                ("MM_NATS_URL", nats_url.as_str()),
                ("MM_BLOB_URL", blob_url.as_str()),
                ("MM_ACK_WAIT_MS", "2000"),
                ("MM_GRACE_MS", "5000"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let mut env = ProcessEnv {
            scheduler,
            ingest,
            media,
            inference,
        };
        tune(&mut env);
        let ingest_addr = env
            .ingest
            .get("MM_LISTEN_ADDR")
            .cloned()
            .ok_or_else(|| anyhow!("ingest has no MM_LISTEN_ADDR"))?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{ingest_addr}"))?.connect_lazy();
        let mut mesh = Self {
            nats,
            postgres,
            database_url,
            blob_dir,
            env,
            bin_dir,
            log_dir,
            children: HashMap::new(),
            channel,
            root: Some(root),
        };
        // The scheduler first (it migrates the database), then the rest at once.
        mesh.start(Process::Scheduler).await?;
        let rest: Vec<Process> = mesh
            .env
            .processes()
            .into_iter()
            .filter(|p| *p != Process::Scheduler)
            .collect();
        for &process in &rest {
            mesh.spawn(process)?;
        }
        for &process in &rest {
            mesh.wait_serving(process, START_DEADLINE).await?;
        }
        Ok(mesh)
    }

    /// The listen address of `process`.
    pub fn addr(&self, process: Process) -> Result<SocketAddr> {
        let text = self
            .env
            .of(process)
            .and_then(|env| env.get("MM_LISTEN_ADDR"))
            .ok_or_else(|| anyhow!("{process} has no MM_LISTEN_ADDR"))?;
        text.parse()
            .with_context(|| format!("{process}: MM_LISTEN_ADDR {text}"))
    }

    /// Where `process` serves `/metrics`, `/livez` and `/readyz`.
    pub fn metrics_addr(&self, process: Process) -> Result<SocketAddr> {
        let text = self
            .env
            .of(process)
            .and_then(|env| env.get("MM_METRICS_ADDR"))
            .ok_or_else(|| anyhow!("{process} has no MM_METRICS_ADDR"))?;
        text.parse()
            .with_context(|| format!("{process}: MM_METRICS_ADDR {text}"))
    }

    /// The log file of `process` (stdout and stderr of every run, appended).
    pub fn log_path(&self, process: Process) -> PathBuf {
        self.log_dir.join(format!("{process}.log"))
    }

    /// The pid of `process` while it runs.
    pub fn pid(&self, process: Process) -> Option<u32> {
        self.children.get(&process).and_then(Child::id)
    }

    /// True while `process` is a running child (it may be starting or draining).
    pub fn is_running(&mut self, process: Process) -> bool {
        match self.children.get_mut(&process) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns `process` without waiting for it to be SERVING.
    pub fn spawn(&mut self, process: Process) -> Result<()> {
        if self.is_running(process) {
            bail!("{process} is already running");
        }
        let env = self
            .env
            .of(process)
            .ok_or_else(|| anyhow!("no such process {process} (media workers: {})", self.env.media.len()))?;
        let log_path = self.log_path(process);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        {
            use std::io::Write;
            writeln!(log, "===== mediamesh test: starting {process} =====")
                .with_context(|| format!("writing {}", log_path.display()))?;
        }
        let err = log
            .try_clone()
            .with_context(|| format!("cloning {}", log_path.display()))?;
        let mut command = Command::new(self.bin_dir.join(process.binary()));
        // Only what this mesh sets: nothing from the test's own environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MM_") {
                command.env_remove(key);
            }
        }
        command
            .envs(env)
            .env("NO_COLOR", "1")
            .current_dir(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.bin_dir.join(process.binary()).display()))?;
        tracing::info!(%process, pid = child.id(), "spawned");
        self.children.insert(process, child);
        Ok(())
    }

    /// Spawns `process` and waits until it is SERVING.
    pub async fn start(&mut self, process: Process) -> Result<()> {
        self.spawn(process)?;
        self.wait_serving(process, START_DEADLINE).await
    }

    /// One health check of `process`: its overall status, or an error when it does not
    /// answer within a second.
    pub async fn health(&self, process: Process) -> Result<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(process)?))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = client.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
        let response = tokio::time::timeout(Duration::from_secs(1), check)
            .await
            .map_err(|_| anyhow!("{process}: health check timed out"))??;
        let status = response.into_inner().status;
        ServingStatus::try_from(status).map_err(|_| anyhow!("{process}: unknown serving status {status}"))
    }

    /// Waits until `process` reports `want`; fails at once (with its log tail) if it exits.
    pub async fn wait_status(&mut self, process: Process, want: ServingStatus, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if !self.is_running(process) {
                bail!("{process} is not running\n{}", self.exit_report(process));
            }
            let status = self.health(process).await;
            if matches!(&status, Ok(s) if *s == want) {
                return Ok(());
            }
            if started.elapsed() > deadline {
                bail!(
                    "{process} not {} after {deadline:?} (last: {status:?})\n{}",
                    want.as_str_name(),
                    self.log_tail(process)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `process` is SERVING.
    pub async fn wait_serving(&mut self, process: Process, deadline: Duration) -> Result<()> {
        self.wait_status(process, ServingStatus::Serving, deadline).await
    }

    /// Waits until every running service is SERVING.
    pub async fn wait_all_serving(&mut self, deadline: Duration) -> Result<()> {
        let mut running: Vec<Process> = self.children.keys().copied().collect();
        running.sort();
        for process in running {
            self.wait_serving(process, deadline).await?;
        }
        Ok(())
    }

    /// Crash: SIGKILL `process` and reap it.
    pub async fn kill(&mut self, process: Process) -> Result<()> {
        let mut child = self
            .children
            .remove(&process)
            .ok_or_else(|| anyhow!("{process} is not running"))?;
        send_signal(&child, process, Signal::SIGKILL)?;
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| anyhow!("{process} still alive 10 s after SIGKILL"))??;
        tracing::info!(%process, %status, "killed");
        Ok(())
    }

    /// Graceful stop: SIGTERM (the service drains), wait up to 30 s, then SIGKILL. Fails if
    /// the service did not exit cleanly.
    pub async fn stop(&mut self, process: Process) -> Result<()> {
        let mut child = self
            .children
            .remove(&process)
            .ok_or_else(|| anyhow!("{process} is not running"))?;
        send_signal(&child, process, Signal::SIGTERM)?;
        let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                bail!(
                    "{process} did not stop within {STOP_GRACE:?} of SIGTERM\n{}",
                    self.log_tail(process)
                );
            }
        };
        if !status.success() {
            bail!("{process} exited with {status} on SIGTERM\n{}", self.log_tail(process));
        }
        Ok(())
    }

    /// Fails (with the log tails) if any service that should be running has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let mut exited = Vec::new();
        for (process, child) in &mut self.children {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => exited.push((*process, status.to_string())),
                Err(e) => exited.push((*process, format!("cannot wait: {e}"))),
            }
        }
        if exited.is_empty() {
            return Ok(());
        }
        exited.sort();
        let mut report = String::new();
        for (process, status) in &exited {
            self.children.remove(process);
            report.push_str(&format!("{process} exited unexpectedly ({status})\n"));
            report.push_str(&self.log_tail(*process));
        }
        Err(anyhow!(report))
    }

    fn exit_report(&mut self, process: Process) -> String {
        let status = match self.children.remove(&process).map(|mut c| c.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            Some(Ok(None)) => "running".to_owned(),
            Some(Err(e)) => format!("cannot wait: {e}"),
            None => "not started".to_owned(),
        };
        format!("{process}: {status}\n{}", self.log_tail(process))
    }

    /// Graceful stop of nats-server (SIGTERM); the services see it go away.
    pub async fn stop_nats(&mut self) -> Result<()> {
        self.nats.stop().await.context("stopping nats-server")
    }

    /// Starts nats-server again on the same port with the same store (JetStream state
    /// persists); also a stop + start when it runs.
    pub async fn start_nats(&mut self) -> Result<()> {
        self.nats.restart().await.context("starting nats-server again")
    }

    /// Stop + start of nats-server, same port and data.
    pub async fn restart_nats(&mut self) -> Result<()> {
        self.stop_nats().await?;
        self.start_nats().await
    }

    /// Fast shutdown of PostgreSQL (SIGINT).
    pub async fn stop_postgres(&mut self) -> Result<()> {
        self.postgres.stop().await.context("stopping PostgreSQL")
    }

    /// Starts PostgreSQL again on the same port with the same data.
    pub async fn start_postgres(&mut self) -> Result<()> {
        self.postgres.restart().await.context("starting PostgreSQL again")
    }

    /// Stop + start of PostgreSQL, same port and data.
    pub async fn restart_postgres(&mut self) -> Result<()> {
        self.stop_postgres().await?;
        self.start_postgres().await
    }

    /// A client of the public API (ingest; `JobService` is forwarded to the scheduler).
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// A direct channel to one service.
    pub fn channel(&self, process: Process) -> Result<Channel> {
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(process)?))?.connect_lazy())
    }

    /// The last lines of `process`'s log.
    pub fn log_tail(&self, process: Process) -> String {
        tail_of(&format!("{process} log"), &self.log_path(process), TAIL_LINES)
    }

    /// The last lines of every log: services, nats-server, PostgreSQL.
    pub fn logs_report(&self) -> String {
        let mut report = String::new();
        for process in self.env.processes() {
            report.push_str(&self.log_tail(process));
        }
        report.push_str(&tail_of("nats-server log", &self.nats.log_path(), TAIL_LINES));
        report.push_str(&tail_of("PostgreSQL log", &self.postgres.log_path(), TAIL_LINES));
        report
    }

    /// The temp dir holding logs, data and blobs.
    pub fn dir(&self) -> Option<&Path> {
        self.root.as_ref().map(tempfile::TempDir::path)
    }

    /// Stops every service gracefully (failing if one does not exit cleanly), then the
    /// servers.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut running: Vec<Process> = self.children.keys().copied().collect();
        running.sort();
        // Clients first, the scheduler last.
        running.reverse();
        let mut failures = Vec::new();
        for process in running {
            if let Err(e) = self.stop(process).await {
                failures.push(format!("{e:#}"));
            }
        }
        self.postgres.stop().await.context("stopping PostgreSQL")?;
        self.nats.stop().await.context("stopping nats-server")?;
        if !failures.is_empty() {
            bail!("shutdown: {}", failures.join("\n"));
        }
        Ok(())
    }
}

impl Drop for ProcessMesh {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.start_kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.children.clear();
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.logs_report());
        }
        if (panicking || std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty()))
            && let Some(root) = self.root.take()
        {
            let kept = root.keep();
            eprintln!("mediamesh test: logs and data kept in {}", kept.display());
        }
    }
}

fn tail_of(what: &str, path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("----- {what} ({}): {e}\n", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "----- {what}, last {} of {} lines ({}):\n{}\n",
        all.len() - start,
        all.len(),
        path.display(),
        all[start..].join("\n")
    )
}

/// Sends `signal` to the child; one that already exited is not an error.
fn send_signal(child: &Child, process: Process, signal: Signal) -> Result<()> {
    if let Some(pid) = child.id() {
        let raw = i32::try_from(pid).with_context(|| format!("pid {pid}"))?;
        match kill(Pid::from_raw(raw), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(anyhow!("{signal} {process} ({pid}): {e}")),
        }
    }
    Ok(())
}
