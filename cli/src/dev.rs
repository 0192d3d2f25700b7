//! `meshctl dev`: the whole mesh in one process. Without `--nats-url` / `--database-url` it
//! starts a nats-server and a PostgreSQL of its own under the data folder, and stops them on
//! exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use mediamesh_localsvc::{NatsOptions, NatsServer, PgOptions, Postgres};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the local servers keep their data and the blob store lives
    #[arg(long, env = "MM_DATA_DIR", default_value = ".mediamesh")]
    pub data_dir: PathBuf,
    /// Use this NATS instead of starting one
    #[arg(long, env = "MM_NATS_URL")]
    pub nats_url: Option<String>,
    /// Use this PostgreSQL instead of starting one
    #[arg(long, env = "MM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Blob store (default: file://<data dir>/blobs)
    #[arg(long, env = "MM_BLOB_URL")]
    pub blob_url: Option<String>,
    /// nats-server binary to start (default: <data dir>/venv/bin/nats-server, then PATH)
    #[arg(long, env = "MM_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub ingest_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub scheduler_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:50053")]
    pub media_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:50054")]
    pub inference_addr: SocketAddr,
    /// The web console (log in with the key in <data dir>/api-key)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub console_addr: SocketAddr,
    /// Link a job's trace to this UI: a URL with `{trace_id}` in it (e.g. Jaeger's
    /// http://127.0.0.1:16686/trace/{trace_id})
    #[arg(long, env = "MM_TRACE_URL", default_value = "")]
    pub trace_url: String,
    /// Serve Prometheus metrics, /livez and /readyz on 127.0.0.1:9101 (ingest), 9102
    /// (scheduler), 9103 (media) and 9104 (inference)
    #[arg(long)]
    pub metrics: bool,
    /// AI providers for the inference jobs (none: the mesh runs without them and says so)
    #[command(flatten)]
    pub providers: mediamesh_gateway::ProviderArgs,
    #[command(flatten)]
    pub common: mediamesh_server::CommonArgs,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

pub async fn run(args: DevArgs, output: crate::Output) -> Result<ExitCode> {
    let _guard = mediamesh_telemetry::init(&args.common.telemetry("meshctl-dev"))?;
    let data = absolute(&args.data_dir)?;
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let mut nats = None;
    let nats_url = match &args.nats_url {
        Some(url) => url.clone(),
        None => {
            let venv = data.join("venv/bin/nats-server");
            let bin = args.nats_server.clone().or_else(|| venv.exists().then_some(venv));
            let server = NatsServer::start(NatsOptions {
                bin,
                dir: data.join("nats"),
                port: None,
            })
            .await
            .context("starting nats-server")?;
            tracing::info!(url = %server.url(), "started nats-server");
            let url = server.url();
            nats = Some(server);
            url
        }
    };
    let mut postgres = None;
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let server = Postgres::start(PgOptions {
                bin_dir: None,
                dir: data.join("postgres"),
                port: None,
                fsync: true,
            })
            .await
            .context("starting PostgreSQL")?;
            mediamesh_store::ensure_database(&server.url("postgres"), "mediamesh").await?;
            tracing::info!(url = %server.url("mediamesh"), "started PostgreSQL");
            let url = server.url("mediamesh");
            postgres = Some(server);
            url
        }
    };
    let blob_url = args
        .blob_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", data.join("blobs").display()));

    // Auth as in production: a fresh internal and admin token per run, and a key for the
    // `dev` tenant that the other meshctl commands find in the data dir.
    let internal_token = mediamesh_server::auth::Token::generate();
    let admin_token = mediamesh_server::auth::Token::generate();
    let api_key = dev_key(&database_url).await?;
    write_secret(&data.join("api-key"), &api_key)?;
    write_secret(&data.join("admin-token"), admin_token.expose())?;
    let auth = mediamesh_server::auth::AuthArgs {
        auth: mediamesh_server::auth::AuthMode::On,
        internal_token: Some(internal_token),
    };

    let shutdown = mediamesh_server::shutdown_on_signals();
    let mut ingest = mediamesh_ingest::IngestConfig::new(
        args.ingest_addr,
        database_url.clone(),
        blob_url.clone(),
        format!("http://{}", args.scheduler_addr),
    );
    ingest.inference_addr = format!("http://{}", args.inference_addr);
    ingest.media_addr = format!("http://{}", args.media_addr);
    ingest.providers = args.providers.clone();
    ingest.auth = auth.clone();
    ingest.admin_token = Some(admin_token);
    let mut scheduler =
        mediamesh_scheduler::SchedulerConfig::new(args.scheduler_addr, database_url.clone(), nats_url.clone());
    scheduler.providers = args.providers.clone();
    scheduler.auth = auth.clone();
    let mut media = mediamesh_media::MediaConfig::new(args.media_addr, nats_url.clone(), blob_url.clone());
    media.auth = auth.clone();
    let mut inference = mediamesh_inference::InferenceConfig::new(
        args.inference_addr,
        database_url.clone(),
        nats_url.clone(),
        blob_url.clone(),
    );
    inference.providers = args.providers.clone();
    inference.auth = auth;
    let mut console = mediamesh_console::ConsoleConfig::new(args.console_addr, format!("http://{}", args.ingest_addr));
    console.trace_url = args.trace_url.clone();
    if args.metrics {
        let local = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        ingest.metrics_addr = local(9101);
        scheduler.metrics_addr = local(9102);
        media.metrics_addr = local(9103);
        inference.metrics_addr = local(9104);
        tracing::info!("metrics on http://127.0.0.1:9101..9104/metrics");
    }
    if output == crate::Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "ingest": args.ingest_addr.to_string(),
                "scheduler": args.scheduler_addr.to_string(),
                "media": args.media_addr.to_string(),
                "inference": args.inference_addr.to_string(),
                "console": format!("http://{}", args.console_addr),
                "mm_addr": format!("http://{}", args.ingest_addr),
                "nats_url": nats_url,
                "database_url": database_url,
                "blob_url": blob_url,
                "tenant": DEV_TENANT,
                "api_key_file": data.join("api-key").display().to_string(),
                "admin_token_file": data.join("admin-token").display().to_string(),
            })
        );
    } else {
        println!(
            "mediamesh dev: ingest {} (MM_ADDR=http://{}), scheduler {}, media {}, inference {}\n  console http://{} (log in with the API key below)\n  nats {}  postgres {}  blobs {}\n  tenant \"dev\": API key in {} (meshctl reads it), admin token in {}\n  Ctrl-C to stop",
            args.ingest_addr,
            args.ingest_addr,
            args.scheduler_addr,
            args.media_addr,
            args.inference_addr,
            args.console_addr,
            nats_url,
            database_url,
            blob_url,
            data.join("api-key").display(),
            data.join("admin-token").display()
        );
    }
    let result = {
        let fail = shutdown.clone();
        let watch = |name: &'static str, r: Result<(), String>| {
            if let Err(err) = &r {
                tracing::error!(service = name, error = %err, "service failed; stopping the mesh");
                fail.cancel();
            }
            r.map_err(|e| anyhow::anyhow!("{name}: {e}"))
        };
        let (a, b, c, d, e) = tokio::join!(
            async {
                watch(
                    "ingest",
                    mediamesh_ingest::serve(ingest, shutdown.clone())
                        .await
                        .map_err(|e| e.to_string()),
                )
            },
            async {
                watch(
                    "scheduler",
                    mediamesh_scheduler::serve(scheduler, shutdown.clone())
                        .await
                        .map_err(|e| e.to_string()),
                )
            },
            async {
                watch(
                    "media",
                    mediamesh_media::serve(media, shutdown.clone())
                        .await
                        .map_err(|e| e.to_string()),
                )
            },
            async {
                watch(
                    "inference",
                    mediamesh_inference::serve(inference, shutdown.clone())
                        .await
                        .map_err(|e| e.to_string()),
                )
            },
            async {
                // The console is a convenience here: if its port is taken, the mesh runs on.
                if let Err(err) = mediamesh_console::serve(console, shutdown.clone()).await {
                    tracing::error!(error = %err, "console not serving (use --console-addr); the mesh runs on");
                }
                Ok::<(), anyhow::Error>(())
            },
        );
        a.and(b).and(c).and(d).and(e)
    };
    if let Some(mut server) = postgres
        && let Err(err) = server.stop().await
    {
        tracing::warn!(error = %err, "stopping PostgreSQL");
    }
    if let Some(mut server) = nats
        && let Err(err) = server.stop().await
    {
        tracing::warn!(error = %err, "stopping nats-server");
    }
    result?;
    tracing::info!("mesh stopped");
    Ok(ExitCode::SUCCESS)
}

/// The tenant `meshctl dev` creates a key for.
const DEV_TENANT: &str = "dev";
const DEV_KEY_NAME: &str = "meshctl dev";

/// A new key for the dev tenant; the keys earlier runs made are revoked.
async fn dev_key(database_url: &str) -> Result<String> {
    let store = mediamesh_store::Store::connect_lazy(database_url, 2)?;
    store.migrate_when_ready(std::time::Duration::from_secs(60)).await?;
    for old in store.list_api_keys(Some(DEV_TENANT), false).await? {
        if old.name == DEV_KEY_NAME {
            store.revoke_api_key(Some(old.id), "").await?;
        }
    }
    let key = mediamesh_ingest::new_api_key();
    store
        .create_api_key(DEV_TENANT, DEV_KEY_NAME, &key.prefix, &key.hash)
        .await?;
    store.close().await;
    Ok(key.secret)
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}
