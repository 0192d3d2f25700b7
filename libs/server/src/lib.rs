//! What every mediamesh service does the same way: common flags, the health reporter driven
//! by dependency checks, server reflection, and shutdown on SIGTERM / Ctrl-C.

pub mod auth;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Startup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flags and `MM_*` variables every service reads.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// OTLP/gRPC endpoint for traces (else OTEL_EXPORTER_OTLP_ENDPOINT; no export when neither is set)
    #[arg(long, env = "MM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log format: text or json
    #[arg(long, env = "MM_LOG_FORMAT", default_value = "text")]
    pub log_format: mediamesh_telemetry::LogFormat,
    /// Log filter, RUST_LOG syntax
    #[arg(long, env = "MM_LOG", default_value = "info")]
    pub log: String,
    /// Print the effective configuration and exit
    #[arg(long)]
    pub print_config: bool,
}

impl CommonArgs {
    pub fn telemetry(&self, service_name: &str) -> mediamesh_telemetry::TelemetryConfig {
        mediamesh_telemetry::TelemetryConfig {
            service_name: service_name.to_owned(),
            log_format: self.log_format,
            otlp_endpoint: mediamesh_telemetry::otlp_endpoint(self.otlp_endpoint.as_deref()),
            filter: Some(self.log.clone()),
        }
    }
}

/// A named dependency check: the service is SERVING only while every check passes.
pub type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Check`].
pub fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// Spawns the task that sets `services` (and the overall "" entry) SERVING while all `checks`
/// pass, NOT_SERVING otherwise. It stops with `shutdown`, leaving everything NOT_SERVING.
pub fn spawn_health(
    reporter: HealthReporter,
    services: &'static [&'static str],
    checks: Vec<(&'static str, Check)>,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_health_with(
        reporter,
        services,
        checks,
        interval,
        shutdown,
        metrics::Readiness::new(),
    )
}

/// [`spawn_health`], also reporting the overall status to `readiness` (the metrics server's
/// `/readyz`).
pub fn spawn_health_with(
    reporter: HealthReporter,
    services: &'static [&'static str],
    checks: Vec<(&'static str, Check)>,
    interval: Duration,
    shutdown: CancellationToken,
    readiness: metrics::Readiness,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        loop {
            let mut ok = true;
            for (name, check) in &checks {
                if !check().await {
                    if last != Some(false) {
                        tracing::warn!(dependency = name, "dependency not answering");
                    }
                    ok = false;
                    break;
                }
            }
            if last != Some(ok) {
                let status = if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in services.iter().copied().chain([""]) {
                    reporter.set_service_status(service, status).await;
                }
                readiness.set(ok);
                tracing::info!(serving = ok, "health changed");
                last = Some(ok);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        for service in services.iter().copied().chain([""]) {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        readiness.set(false);
    })
}

/// Server reflection for every mediamesh service and for health.
/// Runs a background loop until `shutdown`, starting it again (after a second) if it panics,
/// so that one bad message or bug does not leave a service answering SERVING while its
/// dispatcher or consumer is dead.
pub fn supervise<F, Fut>(name: &'static str, shutdown: CancellationToken, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(err) if shutdown.is_cancelled() => {
                    tracing::warn!(task = name, error = %err, "background task ended during shutdown");
                    return;
                }
                Err(err) => {
                    tracing::error!(task = name, error = %err, "background task panicked; restarting it");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    })
}

pub fn reflection()
-> Result<tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mediamesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

/// Binds `addr` for a tonic server.
pub async fn bind(addr: SocketAddr) -> Result<tonic::transport::server::TcpIncoming> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
}

/// A token cancelled on the first SIGTERM or Ctrl-C; a second signal exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight work (signal again to exit now)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The standard `main` of a service binary: telemetry, signals, serve, exit code.
pub async fn run_main<F, Fut, E>(service_name: &str, common: &CommonArgs, serve: F) -> std::process::ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    let _guard = match mediamesh_telemetry::init(&common.telemetry(service_name)) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("{service_name}: telemetry: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_on_signals();
    match serve(shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "service failed");
            std::process::ExitCode::FAILURE
        }
    }
}
