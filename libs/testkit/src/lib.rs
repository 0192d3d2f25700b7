//! Test kit: the whole mesh in this process, on free ports, over a nats-server and a
//! PostgreSQL of its own in a temp folder, with handles to stop and restart any service or
//! server. Nothing is shared between tests and nothing is left behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
pub use mediamesh_localsvc::{NatsOptions, NatsServer, PgOptions, Postgres, free_port};
use mediamesh_proto::v1 as pb;
use mediamesh_proto::v1::admin_service_client::AdminServiceClient;
use mediamesh_proto::v1::inference_service_client::InferenceServiceClient;
use mediamesh_proto::v1::ingest_service_client::IngestServiceClient;
use mediamesh_proto::v1::job_service_client::JobServiceClient;
use mediamesh_proto::v1::media_service_client::MediaServiceClient;
use mediamesh_server::auth::{AuthedChannel, Credentials};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod otlp;
pub mod process;

pub use mediamesh_inference::InferenceConfig;
pub use mediamesh_ingest::IngestConfig;
pub use mediamesh_media::MediaConfig;
pub use mediamesh_scheduler::{JobDefaults, KindDefaults, SchedulerConfig};

/// The workspace root (for fixtures and the locally installed nats-server).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of `../shared/fixtures/media/`.
pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("../shared/fixtures/media").join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Starts a nats-server and a PostgreSQL under `root` (folders `nats`, `postgres`) on free
/// ports, with the `mediamesh` database created; returns them and the database URL.
pub async fn start_servers(root: &std::path::Path) -> Result<(NatsServer, Postgres, String)> {
    start_servers_with(root, false).await
}

/// [`start_servers`]; with `fsync`, PostgreSQL flushes every commit to disk as in production
/// (benchmarks), instead of the tests' fsync=off.
pub async fn start_servers_with(root: &std::path::Path, fsync: bool) -> Result<(NatsServer, Postgres, String)> {
    let nats = NatsServer::start(NatsOptions {
        bin: nats_binary(),
        dir: root.join("nats"),
        port: None,
    })
    .await
    .context("starting nats-server")?;
    let postgres = Postgres::start_fast(PgOptions {
        bin_dir: None,
        dir: root.join("postgres"),
        port: None,
        fsync,
    })
    .await
    .context("starting PostgreSQL")?;
    mediamesh_store::ensure_database(&postgres.url("postgres"), "mediamesh").await?;
    let database_url = postgres.url("mediamesh");
    Ok((nats, postgres, database_url))
}

/// The nats-server to test against: `MM_NATS_SERVER` when set (e.g. Debian's 2.9, to check
/// that both work), else the current one the test command installed, else the one on PATH.
pub fn nats_binary() -> Option<PathBuf> {
    if std::env::var_os(mediamesh_localsvc::NATS_BIN_ENV).is_some() {
        return None;
    }
    let local = workspace_root().join(".mediamesh/venv/bin/nats-server");
    local.exists().then_some(local)
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,async_nats=warn,h2=warn,tower=warn,hyper=warn",
        ))
        .with_test_writer()
        .try_init();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Ingest,
    Scheduler,
    Media,
    Inference,
}

/// The four services' configurations; a test may change them before start.
#[derive(Clone, Debug)]
pub struct Configs {
    pub ingest: IngestConfig,
    pub scheduler: SchedulerConfig,
    pub media: MediaConfig,
    pub inference: InferenceConfig,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<std::result::Result<(), String>>,
}

pub struct Mesh {
    pub nats: NatsServer,
    pub postgres: Postgres,
    pub configs: Configs,
    pub blob_dir: PathBuf,
    running: Vec<(Service, Running)>,
    channel: Channel,
    _root: tempfile::TempDir,
}

impl Mesh {
    /// Starts servers and all four services with default settings.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts servers, lets `tune` change the configurations, then starts the services and
    /// waits until each reports SERVING.
    pub async fn start_with(tune: impl FnOnce(&mut Configs)) -> Result<Self> {
        init_logging();
        let root = tempfile::Builder::new().prefix("mediamesh-test-").tempdir()?;
        let (nats, postgres, database_url) = start_servers(root.path()).await?;
        let blob_dir = root.path().join("blobs");
        let blob_url = format!("file://{}", blob_dir.display());
        let addr = || -> Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
        let scheduler_addr = addr()?;
        let inference_addr = addr()?;
        let mut configs = Configs {
            ingest: IngestConfig::new(
                addr()?,
                database_url.clone(),
                blob_url.clone(),
                format!("http://{scheduler_addr}"),
            ),
            scheduler: SchedulerConfig::new(scheduler_addr, database_url.clone(), nats.url()),
            media: MediaConfig::new(addr()?, nats.url(), blob_url.clone()),
            inference: InferenceConfig::new(inference_addr, database_url, nats.url(), blob_url.clone()),
        };
        configs.ingest.inference_addr = format!("http://{inference_addr}");
        configs.ingest.media_addr = format!("http://{}", configs.media.listen_addr);
        // The services check each other's internal token; the public API trusts mm-tenant
        // unless a test turns API keys on (`configs.ingest.auth.auth = AuthMode::On`), when
        // it also gets an admin token.
        let auth = mediamesh_server::auth::AuthArgs {
            auth: mediamesh_server::auth::AuthMode::Off,
            internal_token: Some(mediamesh_server::auth::Token::generate()),
        };
        configs.ingest.auth = auth.clone();
        configs.scheduler.auth = auth.clone();
        configs.media.auth = auth.clone();
        configs.inference.auth = auth;
        configs.ingest.admin_token = Some(mediamesh_server::auth::Token::generate());
        configs.ingest.metrics_addr = Some(addr()?);
        configs.scheduler.metrics_addr = Some(addr()?);
        configs.media.metrics_addr = Some(addr()?);
        configs.inference.metrics_addr = Some(addr()?);
        configs.ingest.health_interval_ms = 100;
        configs.scheduler.health_interval_ms = 100;
        configs.scheduler.retry_base_ms = 200;
        configs.scheduler.retry_cap_ms = 2_000;
        configs.scheduler.enable_test_kinds = true;
        configs.scheduler.blob_url = blob_url;
        configs.media.enable_test_kinds = true;
        configs.media.health_interval_ms = 100;
        configs.inference.health_interval_ms = 100;
        configs.inference.ack_wait_ms = 2_000;
        configs.inference.grace_ms = 5_000;
        tune(&mut configs);
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", configs.ingest.listen_addr))?.connect_lazy();
        let mut mesh = Self {
            nats,
            postgres,
            configs,
            blob_dir,
            running: Vec::new(),
            channel,
            _root: root,
        };
        for service in [Service::Scheduler, Service::Ingest, Service::Media, Service::Inference] {
            mesh.start_service(service).await?;
        }
        Ok(mesh)
    }

    pub fn addr(&self, service: Service) -> SocketAddr {
        match service {
            Service::Ingest => self.configs.ingest.listen_addr,
            Service::Scheduler => self.configs.scheduler.listen_addr,
            Service::Media => self.configs.media.listen_addr,
            Service::Inference => self.configs.inference.listen_addr,
        }
    }

    /// Where `service` serves `/metrics`, `/livez` and `/readyz` (None: metrics are off).
    pub fn metrics_addr(&self, service: Service) -> Option<SocketAddr> {
        match service {
            Service::Ingest => self.configs.ingest.metrics_addr,
            Service::Scheduler => self.configs.scheduler.metrics_addr,
            Service::Media => self.configs.media.metrics_addr,
            Service::Inference => self.configs.inference.metrics_addr,
        }
    }

    /// Starts one service in this process and waits until it is SERVING.
    pub async fn start_service(&mut self, service: Service) -> Result<()> {
        if self.running.iter().any(|(s, _)| *s == service) {
            return Err(anyhow!("{service:?} is already running"));
        }
        let stop = CancellationToken::new();
        let token = stop.clone();
        let c = self.configs.clone();
        let task = match service {
            Service::Ingest => tokio::spawn(async move {
                mediamesh_ingest::serve(c.ingest, token)
                    .await
                    .map_err(|e| e.to_string())
            }),
            Service::Scheduler => tokio::spawn(async move {
                mediamesh_scheduler::serve(c.scheduler, token)
                    .await
                    .map_err(|e| e.to_string())
            }),
            Service::Media => {
                tokio::spawn(async move { mediamesh_media::serve(c.media, token).await.map_err(|e| e.to_string()) })
            }
            Service::Inference => tokio::spawn(async move {
                mediamesh_inference::serve(c.inference, token)
                    .await
                    .map_err(|e| e.to_string())
            }),
        };
        // Until it serves, watch the task too: a service that fails to start (a port
        // taken, a bad configuration) says why at once instead of after the deadline.
        let addr = self.addr(service);
        let serving = wait_serving(addr, Duration::from_secs(60));
        tokio::pin!(serving);
        let mut task = task;
        let ready = tokio::select! {
            ready = &mut serving => ready,
            ended = &mut task => {
                let why = match ended {
                    Ok(Ok(())) => "it returned before serving".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                return Err(anyhow!("{service:?} at {addr} did not start: {why}"));
            }
        };
        self.running.push((service, Running { stop, task }));
        ready
    }

    /// Stops one service gracefully (it drains what it is doing) and waits for it.
    pub async fn stop_service(&mut self, service: Service) -> Result<()> {
        let index = self
            .running
            .iter()
            .position(|(s, _)| *s == service)
            .ok_or_else(|| anyhow!("{service:?} is not running"))?;
        let (_, running) = self.running.remove(index);
        running.stop.cancel();
        running.task.await?.map_err(|e| anyhow!("{service:?} failed: {e}"))
    }

    /// A client of the public API (ingest; `JobService` is forwarded to the scheduler).
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }

    /// `InferenceService` through ingest (the public address).
    pub fn inference(&self) -> InferenceServiceClient<Channel> {
        InferenceServiceClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// `MediaService` through ingest (the public address).
    pub fn media(&self) -> MediaServiceClient<Channel> {
        MediaServiceClient::new(self.channel.clone())
    }

    /// `AdminService` with the admin token.
    pub fn admin(&self) -> AdminServiceClient<AuthedChannel> {
        let token = self.configs.ingest.admin_token.as_ref().map_or("", |t| t.expose());
        AdminServiceClient::new(Credentials::bearer(token).channel(self.channel.clone()))
    }

    /// A channel to the public API that sends `key` as the bearer token.
    pub fn with_key(&self, key: &str) -> AuthedChannel {
        Credentials::bearer(key).channel(self.channel.clone())
    }

    /// Creates an API key for `tenant`; returns its secret.
    pub async fn create_key(&self, tenant: &str) -> Result<String> {
        Ok(self
            .admin()
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant.to_owned(),
                name: "test".to_owned(),
            })
            .await?
            .into_inner()
            .secret)
    }

    /// A direct channel to one service.
    pub fn channel(&self, service: Service) -> Result<Channel> {
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(service)))?.connect_lazy())
    }

    /// Stops every service, then the servers.
    pub async fn shutdown(mut self) -> Result<()> {
        for (_, running) in &self.running {
            running.stop.cancel();
        }
        for (service, running) in self.running.drain(..) {
            running.task.await?.map_err(|e| anyhow!("{service:?} failed: {e}"))?;
        }
        self.postgres.stop().await?;
        self.nats.stop().await?;
        Ok(())
    }
}

/// Polls `grpc.health.v1` on `addr` until the overall status is SERVING.
pub async fn wait_serving(addr: SocketAddr, deadline: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let status = client
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32) {
            return Ok(());
        }
        if started.elapsed() > deadline {
            return Err(anyhow!("{addr} not SERVING after {deadline:?}: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Uploads `data` in 256 KiB chunks.
pub async fn upload(
    client: &mut IngestServiceClient<Channel>,
    filename: &str,
    data: &[u8],
) -> std::result::Result<pb::UploadMediaResponse, tonic::Status> {
    upload_as(client, "", "", filename, data).await
}

/// Uploads `data` in 256 KiB chunks as `tenant` (empty: the default one), in an upload
/// `category` (empty: none).
pub async fn upload_as(
    client: &mut IngestServiceClient<Channel>,
    tenant: &str,
    category: &str,
    filename: &str,
    data: &[u8],
) -> std::result::Result<pb::UploadMediaResponse, tonic::Status> {
    let mut request = tonic::Request::new(futures::stream::iter(upload_parts(category, filename, data)));
    if !tenant.is_empty() {
        let value = tenant
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("tenant is not a valid header value"))?;
        request.metadata_mut().insert(mediamesh_core::TENANT_METADATA, value);
    }
    client.upload_media(request).await.map(tonic::Response::into_inner)
}

/// The messages of an `UploadMedia` stream: the header, then `data` in 256 KiB chunks.
pub fn upload_parts(category: &str, filename: &str, data: &[u8]) -> Vec<pb::UploadMediaRequest> {
    let mut parts = vec![pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Header(pb::UploadHeader {
            filename: filename.to_owned(),
            content_type: String::new(),
            category: category.to_owned(),
            extract_schema_json: String::new(),
        })),
    }];
    parts.extend(data.chunks(256 * 1024).map(|chunk| pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Chunk(chunk.to_vec())),
    }));
    parts
}

/// Follows a job with `WatchJob` until its stream ends (at a terminal state); returns every
/// message received.
pub async fn watch_to_end(
    jobs: &mut JobServiceClient<Channel>,
    job_id: &str,
    deadline: Duration,
) -> Result<Vec<pb::WatchJobResponse>> {
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_owned(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    let collect = async {
        while let Some(message) = stream.next().await {
            seen.push(message?);
        }
        Ok::<(), tonic::Status>(())
    };
    tokio::time::timeout(deadline, collect)
        .await
        .map_err(|_| anyhow!("job {job_id} did not end within {deadline:?}"))??;
    Ok(seen)
}

/// Waits until the job ends and returns it.
pub async fn wait_job(jobs: &mut JobServiceClient<Channel>, job_id: &str, deadline: Duration) -> Result<pb::Job> {
    let seen = watch_to_end(jobs, job_id, deadline).await?;
    let _ = seen;
    let job = jobs
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow!("no job"))?;
    Ok(job)
}

/// Downloads a media's original or derivative.
pub async fn download(client: &mut IngestServiceClient<Channel>, media_id: &str, name: &str) -> Result<Vec<u8>> {
    let stream = client
        .download_media(pb::DownloadMediaRequest {
            media_id: media_id.to_owned(),
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    let (_, data) = mediamesh_proto::read_download(stream).await?;
    Ok(data)
}

/// Every file under the blob folder, relative to it.
pub fn blob_files(mesh: &Mesh) -> Vec<String> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&mesh.blob_dir, &mesh.blob_dir, &mut out);
    out.sort();
    out
}
