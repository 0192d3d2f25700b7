//! Local `nats-server` with JetStream.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::process::Proc;

const NAME: &str = "nats-server";
const READY: &str = "Server is ready";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Env var naming the `nats-server` binary to use when none is given.
pub const NATS_BIN_ENV: &str = "MM_NATS_SERVER";

/// Options for [`NatsServer::start`].
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// `nats-server` binary; found with [`NatsServer::find_binary`] when `None`.
    pub bin: Option<PathBuf>,
    /// Folder for the JetStream store (`DIR/jetstream`) and log (`DIR/nats.log`).
    pub dir: PathBuf,
    /// Port to listen on (127.0.0.1); a free one when `None`.
    pub port: Option<u16>,
}

impl NatsOptions {
    /// Options with auto-detected binary and a free port.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NatsOptions {
            bin: None,
            dir: dir.into(),
            port: None,
        }
    }
}

/// A running (or stopped) `nats-server` child process with JetStream.
///
/// Dropping it kills the process.
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Proc,
}

impl NatsServer {
    /// Finds the binary: `explicit` if given, else `$MM_NATS_SERVER`,
    /// else `nats-server` on `PATH`, else `/usr/sbin/nats-server`.
    pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(bin) = explicit {
            return if fsutil::is_executable(bin) {
                Ok(bin.to_path_buf())
            } else {
                Err(Error::NotFound(format!("nats-server at {}", bin.display())))
            };
        }
        if let Some(bin) = std::env::var_os(NATS_BIN_ENV).filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            return if fsutil::is_executable(&bin) {
                Ok(bin)
            } else {
                Err(Error::NotFound(format!(
                    "nats-server at {} (from {NATS_BIN_ENV})",
                    bin.display()
                )))
            };
        }
        if let Some(bin) = fsutil::which("nats-server") {
            return Ok(bin);
        }
        let sbin = Path::new("/usr/sbin/nats-server");
        if fsutil::is_executable(sbin) {
            return Ok(sbin.to_path_buf());
        }
        Err(Error::NotFound(
            "nats-server (on PATH or /usr/sbin/nats-server)".to_string(),
        ))
    }

    /// Starts `nats-server -js` on 127.0.0.1 and waits until it is ready.
    pub async fn start(opts: NatsOptions) -> Result<Self> {
        let bin = Self::find_binary(opts.bin.as_deref())?;
        let dir = fsutil::create_dir(&opts.dir)?;
        let mut server = NatsServer {
            bin,
            dir,
            port: 0,
            proc: Proc::new(NAME),
        };
        match opts.port {
            Some(port) => {
                server.port = port;
                server.launch().await?;
            }
            None => {
                let mut attempt = 0;
                loop {
                    server.port = crate::free_port().map_err(|e| Error::io("free port", e))?;
                    match server.launch().await {
                        Err(Error::PortInUse { .. }) if attempt < 5 => attempt += 1,
                        other => break other?,
                    }
                }
            }
        }
        Ok(server)
    }

    async fn launch(&mut self) -> Result<()> {
        let log = self.log_path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .current_dir(&self.dir);
        let offset = self.proc.spawn(&mut cmd, &log)?;
        self.proc
            .wait_ready(&log, offset, READY, READY_TIMEOUT, self.port, false)
            .await?;
        tracing::debug!(port = self.port, "nats ready");
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder given in the options (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// JetStream store dir, `DIR/jetstream`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// Server log (stdout and stderr of all runs, appended), `DIR/nats.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// Pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Graceful stop: SIGTERM, wait up to 10 s, then SIGKILL. Reaps.
    pub async fn stop(&mut self) -> Result<()> {
        self.proc.terminate(Signal::SIGTERM, STOP_GRACE, false).await
    }

    /// Crash: SIGKILL and reap.
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill(false)
    }

    /// Stops the server if running, then starts it again on the same port
    /// with the same store dir (JetStream data survives).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let mut attempt = 0;
        loop {
            match self.launch().await {
                // The port may be briefly held by a stray connection; retry.
                Err(Error::PortInUse { .. }) if attempt < 10 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    /// True while the process runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.proc.shutdown_blocking(None, Duration::ZERO, false);
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("bin", &self.bin)
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("pid", &self.proc.pid())
            .finish()
    }
}
