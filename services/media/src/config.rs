use std::net::SocketAddr;
use std::path::PathBuf;

/// Media service settings, from flags or `MM_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct MediaConfig {
    /// gRPC listen address
    #[arg(long, env = "MM_LISTEN_ADDR", default_value = "0.0.0.0:50053")]
    pub listen_addr: SocketAddr,
    /// Prometheus metrics, /livez and /readyz over HTTP (empty: off)
    #[arg(long, env = "MM_METRICS_ADDR", default_value = "0.0.0.0:9103", value_parser = mediamesh_server::metrics::parse_metrics_addr)]
    pub metrics_addr: ::std::option::Option<SocketAddr>,
    /// API keys and the internal token
    #[command(flatten)]
    pub auth: mediamesh_server::auth::AuthArgs,
    /// NATS URL
    #[arg(long, env = "MM_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Replicas of the JetStream streams the service creates when they are missing (3 on a
    /// three-node NATS cluster; an existing stream keeps its own)
    #[arg(long, env = "MM_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// Blob store: file:///dir or s3://bucket
    #[arg(long, env = "MM_BLOB_URL")]
    pub blob_url: String,
    /// Jobs run at once (0: one per CPU core)
    #[arg(long, env = "MM_WORKER_CONCURRENCY", default_value_t = 0)]
    pub worker_concurrency: usize,
    /// A job reports that it started only once it has run this long (0: before it runs); a
    /// shorter job reports once, when it ends, with its start time
    #[arg(long, env = "MM_START_REPORT_AFTER_MS", default_value_t = 50)]
    pub start_report_after_ms: u64,
    /// Largest image, in pixels, that a job will decode
    #[arg(long, env = "MM_MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// How long JetStream waits for an ack or a heartbeat before it gives a job to another
    /// worker (set when the `media` consumer is created)
    #[arg(long, env = "MM_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// Run the test.sleep kind (fault tests only; never in production)
    #[arg(long, env = "MM_ENABLE_TEST_KINDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_test_kinds: bool,
    /// Run the noop kind (benchmarks: what the queue itself costs)
    #[arg(long, env = "MM_ENABLE_NOOP", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_noop: bool,
    /// Time given to jobs under way to finish on shutdown
    #[arg(long, env = "MM_GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,
    /// How often health re-checks NATS and the blob store
    #[arg(long, env = "MM_HEALTH_INTERVAL_MS", default_value_t = 1_000)]
    pub health_interval_ms: u64,
    /// The ffmpeg program (audio and video jobs)
    #[arg(long, env = "MM_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
    /// The ffprobe program (probe of audio and video)
    #[arg(long, env = "MM_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,
    /// Thumbnail formats, comma-separated: jpeg, webp
    #[arg(long, env = "MM_THUMB_FORMATS", default_value = "jpeg")]
    pub thumb_formats: String,
    /// Quality of thumbnail derivatives, 1..=100
    #[arg(long, env = "MM_THUMB_QUALITY", default_value_t = 85)]
    pub thumb_quality: u8,
    /// Audio frames per waveform point (a job's payload may set `samples_per_pixel`)
    #[arg(long, env = "MM_WAVEFORM_SAMPLES_PER_PIXEL", default_value_t = 256)]
    pub waveform_samples_per_pixel: u32,
    /// Length of a video preview, in seconds
    #[arg(long, env = "MM_VIDEO_PREVIEW_SECONDS", default_value_t = 10.0)]
    pub video_preview_seconds: f64,
    /// Largest height of a video preview
    #[arg(long, env = "MM_VIDEO_PREVIEW_MAX_HEIGHT", default_value_t = 720)]
    pub video_preview_max_height: u32,
    /// Reuse the outputs of earlier jobs on the same bytes (same sha256, kind and settings)
    #[arg(long, env = "MM_REUSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub reuse: bool,
    /// Folder for the temporary files of audio and video jobs (default: the system's)
    #[arg(long, env = "MM_TMP_DIR")]
    pub tmp_dir: Option<PathBuf>,
}

impl MediaConfig {
    pub fn new(listen_addr: SocketAddr, nats_url: String, blob_url: String) -> Self {
        Self {
            listen_addr,
            metrics_addr: None,
            auth: mediamesh_server::auth::AuthArgs::default(),
            nats_url,
            stream_replicas: 1,
            blob_url,
            worker_concurrency: 0,
            start_report_after_ms: 50,
            max_pixels: 100_000_000,
            ack_wait_ms: 30_000,
            enable_test_kinds: false,
            enable_noop: false,
            grace_ms: 30_000,
            health_interval_ms: 1_000,
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            thumb_formats: "jpeg".to_owned(),
            thumb_quality: 85,
            waveform_samples_per_pixel: 256,
            video_preview_seconds: 10.0,
            video_preview_max_height: 720,
            reuse: true,
            tmp_dir: None,
        }
    }

    pub fn concurrency(&self) -> usize {
        if self.worker_concurrency > 0 {
            self.worker_concurrency
        } else {
            std::thread::available_parallelism().map_or(2, usize::from)
        }
    }

    /// Checks the settings that can be wrong; called at start so a bad value stops the
    /// service with a clear message instead of failing every job.
    pub fn validate(&self) -> Result<(), String> {
        self.thumb_options()?;
        if self.waveform_samples_per_pixel == 0 {
            return Err("MM_WAVEFORM_SAMPLES_PER_PIXEL must be at least 1".to_owned());
        }
        if !(self.video_preview_seconds > 0.0 && self.video_preview_seconds <= 600.0) {
            return Err("MM_VIDEO_PREVIEW_SECONDS must be in (0, 600]".to_owned());
        }
        if self.video_preview_max_height < 16 {
            return Err("MM_VIDEO_PREVIEW_MAX_HEIGHT must be at least 16".to_owned());
        }
        Ok(())
    }

    /// The thumbnail settings: the standard three sizes in each configured format.
    pub fn thumb_options(&self) -> Result<mediamesh_imaging::ThumbOptions, String> {
        let mut options = mediamesh_imaging::ThumbOptions::default();
        if !(1..=100).contains(&self.thumb_quality) {
            return Err(format!("MM_THUMB_QUALITY must be 1..=100, not {}", self.thumb_quality));
        }
        options.quality = self.thumb_quality;
        let mut formats = Vec::new();
        for name in self.thumb_formats.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let format = mediamesh_imaging::OutputFormat::parse(name)
                .ok_or_else(|| format!("MM_THUMB_FORMATS: unknown format {name:?} (jpeg, webp, avif)"))?;
            if format == mediamesh_imaging::OutputFormat::Avif {
                return Err("MM_THUMB_FORMATS: AVIF output is not built into this release (jpeg, webp)".to_owned());
            }
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        if formats.is_empty() {
            return Err("MM_THUMB_FORMATS names no format".to_owned());
        }
        options.formats = formats;
        Ok(options)
    }

    pub fn av_tools(&self) -> mediamesh_av::Tools {
        mediamesh_av::Tools {
            ffmpeg: self.ffmpeg.clone(),
            ffprobe: self.ffprobe.clone(),
        }
    }

    pub fn limits(&self) -> mediamesh_imaging::Limits {
        mediamesh_imaging::Limits {
            max_pixels: self.max_pixels,
            ..Default::default()
        }
    }
}
