//! meshctl: the mediamesh command line. `meshctl dev` runs the whole mesh in one process; the
//! other commands talk to a running mesh at `MM_ADDR`.

mod commands;
mod dev;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "meshctl", version, about = "Run and use a mediamesh")]
pub struct Cli {
    /// The mesh's public gRPC address (ingest)
    #[arg(long, global = true, env = "MM_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// API key of the tenant to act for (else the file in MM_API_KEY_FILE, else .mediamesh/api-key, written by `meshctl dev`)
    #[arg(long, global = true, env = "MM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// File holding the API key
    #[arg(long, global = true, env = "MM_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Admin token for `keys` and `quotas` (else .mediamesh/admin-token, written by `meshctl dev`)
    #[arg(long, global = true, env = "MM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Output: text for people, json for programs (one document per command)
    #[arg(short = 'o', long, global = true, default_value = "text")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole mesh in this process (starts nats-server and PostgreSQL when no URLs are given)
    Dev(Box<dev::DevArgs>),
    /// Upload files; prints the media and the jobs their pipeline created
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Follow the jobs until they end, with a progress line each
        #[arg(long)]
        watch: bool,
        /// Upload category: adds the jobs configured for it (MM_PIPELINES on ingest)
        #[arg(long, default_value = "")]
        category: String,
        /// Audio/video: transcribe, then extract these fields from the transcript (a JSON
        /// Schema inline, or @FILE)
        #[arg(long)]
        extract_schema: Option<String>,
    },
    /// Submit a job (on an uploaded media, or over other jobs for `aggregate`)
    Submit {
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "")]
        media: String,
        /// Parameters as a JSON object
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value_t = 0)]
        priority: u32,
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Attempt budget (0: the kind's default)
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// Per-attempt timeout in ms (0: the kind's default)
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        /// Start no earlier than this many seconds from now
        #[arg(long)]
        delay: Option<u64>,
        /// A job id this one waits for (repeat for several)
        #[arg(long = "depends-on")]
        depends_on: Vec<String>,
        /// What a failed dependency does to this job: fail, skip or continue
        #[arg(long, default_value = "fail")]
        on_dependency_failure: String,
        #[arg(long)]
        watch: bool,
    },
    /// Show a job with its attempts and result
    Get { job_id: String },
    /// List jobs, oldest first (or newest first with --newest)
    List {
        #[arg(long, default_value = "")]
        media: String,
        /// QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED or CANCELLED
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value = "")]
        kind: String,
        /// Jobs created since: a time (RFC 3339) or an age (90s, 15m, 2h, 7d)
        #[arg(long)]
        since: Option<String>,
        /// Jobs created before: a time (RFC 3339) or an age
        #[arg(long)]
        until: Option<String>,
        /// Jobs per page (1..=1000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this page token (printed with the previous page)
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow the page tokens to the end
        #[arg(long)]
        all: bool,
        /// Only jobs whose error has this code (BAD_INPUT, TIMEOUT, PROVIDER_DOWN, ...)
        #[arg(long)]
        code: Option<String>,
        /// Newest first (page tokens then go back in time)
        #[arg(long)]
        newest: bool,
    },
    /// Follow a job until it ends; with no id, a live table of all the tenant's jobs
    Watch {
        job_id: Option<String>,
        /// With no id: only jobs of this kind
        #[arg(long, default_value = "")]
        kind: String,
        /// With no id: only changes into this state
        #[arg(long)]
        state: Option<String>,
        /// With no id: only jobs on this media
        #[arg(long, default_value = "")]
        media: String,
        /// With no id: resume after this cursor (printed with each change in JSON output)
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// Create, list and revoke API keys (needs the admin token)
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Show or change a tenant's quotas (needs the admin token)
    Quotas {
        #[command(subcommand)]
        command: QuotasCommand,
    },
    /// Cancel a job
    Cancel { job_id: String },
    /// Run a failed or cancelled job again, or with --failed / --cancelled every one that
    /// matches the filters (like `queue:retry all`)
    Retry {
        #[arg(required_unless_present_any = ["failed", "cancelled"], conflicts_with_all = ["failed", "cancelled"])]
        job_id: Option<String>,
        /// Retry the FAILED jobs that match the filters
        #[arg(long)]
        failed: bool,
        /// Retry the CANCELLED jobs that match the filters
        #[arg(long, conflicts_with = "failed")]
        cancelled: bool,
        /// Only jobs of this kind
        #[arg(long, default_value = "")]
        kind: String,
        /// Only jobs that failed with this error code (TIMEOUT, PROVIDER_DOWN, ...)
        #[arg(long)]
        code: Option<String>,
        /// Only jobs that ended in the last this-many seconds
        #[arg(long)]
        since: Option<u64>,
        /// At most this many jobs (1..=1000)
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// List the jobs that would be retried, without retrying them
        #[arg(long)]
        dry_run: bool,
    },
    /// Job counts per queue, kind and state, with throughput and waits
    Stats,
    /// Show a media with its derivatives and jobs
    Media { media_id: String },
    /// Check that the mesh answers health with SERVING
    Health {
        /// Keep trying for up to this many seconds
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Download a media's original or a derivative (thumb, medium, large)
    Download {
        media_id: String,
        #[arg(default_value = "original")]
        name: String,
        /// Where to write it (default: <media id>-<name>.<ext> here)
        #[arg(short = 'O', long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key for a tenant (created when new); prints the key once
    Create {
        #[arg(long)]
        tenant: String,
        /// A label for people
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their secrets)
    List {
        #[arg(long, default_value = "")]
        tenant: String,
        /// Include revoked keys
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key by id or prefix: calls with it fail at once
    Revoke { key: String },
}

#[derive(Subcommand, Debug)]
pub enum QuotasCommand {
    /// The tenant's effective quotas, its overrides and its usage
    Get { tenant: String },
    /// Set some of the tenant's quotas (0: no limit); --reset NAME puts one back to the default
    Set {
        tenant: String,
        #[arg(long)]
        jobs_per_hour: Option<u64>,
        #[arg(long)]
        jobs_per_day: Option<u64>,
        #[arg(long)]
        upload_bytes: Option<u64>,
        #[arg(long)]
        payload_bytes: Option<u64>,
        #[arg(long)]
        stored_bytes: Option<u64>,
        #[arg(long)]
        running_jobs: Option<u64>,
        #[arg(long)]
        submits_per_second: Option<f64>,
        #[arg(long)]
        submit_burst: Option<u64>,
        #[arg(long)]
        reset: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("meshctl: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let output = cli.output;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(*args, output).await,
            Command::Health { wait } => commands::health(&cli.addr, output, wait).await,
            Command::Keys { command } => commands::keys(&cli.addr, output, cli.admin_token, command).await,
            Command::Quotas { command } => commands::quotas(&cli.addr, output, cli.admin_token, command).await,
            command => {
                let key = commands::api_key(cli.api_key, cli.api_key_file)?;
                commands::run(&cli.addr, output, key, command).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({ "error": { "message": format!("{err:#}"), "code": commands::error_code(&err) } })
                );
            } else {
                eprintln!("meshctl: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
