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
    /// List jobs
    List {
        #[arg(long, default_value = "")]
        media: String,
        /// QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED or CANCELLED
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow a job's state changes and progress until it ends
    Watch { job_id: String },
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
            command => commands::run(&cli.addr, output, command).await,
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
