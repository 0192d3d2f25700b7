//! Local PostgreSQL server (`postgres` started directly, not via pg_ctl).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fsutil::{self, RunAs};
use crate::process::Proc;

const NAME: &str = "postgres";
const READY: &str = "database system is ready to accept connections";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(20);
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Longest usable unix socket path is 107 bytes; the socket file name
/// `/.s.PGSQL.NNNNN` takes 15 of them.
const MAX_SOCKET_DIR_LEN: usize = 107 - 15;
/// Env var naming the PostgreSQL bin dir to use when none is given.
pub const PG_BIN_DIR_ENV: &str = "MM_PG_BIN_DIR";

/// Options for [`Postgres::start`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Dir holding `initdb` and `postgres`; found with
    /// [`Postgres::find_bin_dir`] when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Folder for `data/`, `run/` (unix socket) and `postgres.log`.
    pub dir: PathBuf,
    /// Port to listen on (127.0.0.1); a free one when `None`.
    pub port: Option<u16>,
    /// `false` runs with `fsync=off` and `full_page_writes=off` (fast, but
    /// data may be lost on an OS crash; a process kill loses nothing).
    pub fsync: bool,
}

impl PgOptions {
    /// Options with auto-detected binaries, a free port and fsync off.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PgOptions {
            bin_dir: None,
            dir: dir.into(),
            port: None,
            fsync: false,
        }
    }
}

/// How to create a missing data dir.
#[derive(Clone, Debug)]
enum Init {
    Initdb,
    Template(PathBuf),
    TemplateOrInitdb(PathBuf),
}

/// A running (or stopped) PostgreSQL server child process.
///
/// Superuser `postgres`, trust auth, listening on 127.0.0.1 only.
/// Dropping it shuts the server down (SIGQUIT, then SIGKILL).
pub struct Postgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    fsync: bool,
    run_as: Option<RunAs>,
    socket_dir: Option<PathBuf>,
    proc: Proc,
}

impl Postgres {
    /// Finds the dir holding `initdb` and `postgres`: `explicit` if given,
    /// else `$MM_PG_BIN_DIR`, else `pg_config --bindir` if that has
    /// `initdb`, else the highest `/usr/lib/postgresql/*/bin`, else the dir
    /// of the first `initdb` on `PATH` (symlinks resolved).
    pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(dir) = explicit {
            return checked_bin_dir(dir)
                .ok_or_else(|| Error::NotFound(format!("initdb and postgres in {}", dir.display())));
        }
        if let Some(dir) = std::env::var_os(PG_BIN_DIR_ENV).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return checked_bin_dir(&dir).ok_or_else(|| {
                Error::NotFound(format!(
                    "initdb and postgres in {} (from {PG_BIN_DIR_ENV})",
                    dir.display()
                ))
            });
        }
        if let Some(dir) = pg_config_bindir().as_deref().and_then(checked_bin_dir) {
            return Ok(dir);
        }
        if let Some(dir) = highest_debian_bin_dir() {
            return Ok(dir);
        }
        if let Some(dir) = fsutil::which("initdb")
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().and_then(checked_bin_dir))
        {
            return Ok(dir);
        }
        Err(Error::NotFound(
            "postgresql bin dir (pg_config, /usr/lib/postgresql/*/bin or initdb on PATH)".to_string(),
        ))
    }

    /// Starts postgres in `opts.dir`, running `initdb` first when
    /// `DIR/data/PG_VERSION` does not exist (about 1 s; see
    /// [`Postgres::start_fast`]).
    pub async fn start(opts: PgOptions) -> Result<Self> {
        Self::start_with(opts, Init::Initdb).await
    }

    /// Like [`Postgres::start`], but a missing data dir is copied from an
    /// initdb'ed template kept at `template_root/pg-template-<major>`
    /// (created once, under an exclusive file lock).
    pub async fn start_from_template(opts: PgOptions, template_root: &Path) -> Result<Self> {
        Self::start_with(opts, Init::Template(template_root.to_path_buf())).await
    }

    /// [`Postgres::start_from_template`] with [`Postgres::default_template_root`];
    /// falls back to plain `initdb` if the template cannot be used.
    pub async fn start_fast(opts: PgOptions) -> Result<Self> {
        Self::start_with(opts, Init::TemplateOrInitdb(Self::default_template_root())).await
    }

    /// `$TMPDIR/mediamesh-localsvc`
    pub fn default_template_root() -> PathBuf {
        std::env::temp_dir().join("mediamesh-localsvc")
    }

    async fn start_with(opts: PgOptions, init: Init) -> Result<Self> {
        let started = Instant::now();
        let bin_dir = Self::find_bin_dir(opts.bin_dir.as_deref())?;
        let run_as = fsutil::postgres_user()?;
        let dir = fsutil::create_dir(&opts.dir)?;
        {
            let (bin_dir, dir) = (bin_dir.clone(), dir.clone());
            tokio::task::spawn_blocking(move || prepare(&bin_dir, &dir, run_as, &init)).await??;
        }
        let socket_dir = dir.join("run");
        let socket_dir = if socket_dir.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
            Some(socket_dir)
        } else {
            tracing::warn!(dir = %socket_dir.display(), "socket dir path too long, unix socket disabled");
            None
        };
        let mut pg = Postgres {
            bin_dir,
            dir,
            port: 0,
            fsync: opts.fsync,
            run_as,
            socket_dir,
            proc: Proc::new(NAME),
        };
        match opts.port {
            Some(port) => {
                pg.port = port;
                pg.launch().await?;
            }
            None => {
                let mut attempt = 0;
                loop {
                    pg.port = crate::free_port().map_err(|e| Error::io("free port", e))?;
                    match pg.launch().await {
                        Err(Error::PortInUse { .. }) if attempt < 5 => attempt += 1,
                        other => break other?,
                    }
                }
            }
        }
        tracing::debug!(
            port = pg.port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "postgres ready"
        );
        Ok(pg)
    }

    async fn launch(&mut self) -> Result<()> {
        let log = self.log_path();
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir.as_deref().unwrap_or(Path::new("")));
        let mut settings = vec![
            "listen_addresses=127.0.0.1",
            "max_connections=200",
            "shared_buffers=32MB",
            "logging_collector=off",
            "log_destination=stderr",
            "lc_messages=C",
            // Dynamic shared memory as files in the data dir, so a killed
            // server leaves nothing behind in /dev/shm.
            "dynamic_shared_memory_type=mmap",
        ];
        if !self.fsync {
            settings.extend(["fsync=off", "full_page_writes=off"]);
        }
        // Extra settings for diagnosis (benchmarks), `;`-separated: e.g.
        // `shared_preload_libraries=pg_stat_statements;log_min_duration_statement=20`.
        let extra = std::env::var("MM_LOCALSVC_PG_SETTINGS").unwrap_or_default();
        for s in settings
            .into_iter()
            .chain(extra.split(';').map(str::trim).filter(|s| !s.is_empty()))
        {
            cmd.arg("-c").arg(s);
        }
        cmd.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let offset = self.proc.spawn(&mut cmd, &log)?;
        self.proc
            .wait_ready(&log, offset, READY, READY_TIMEOUT, self.port, true)
            .await
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder given in the options (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/data`
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `DIR/run`, or `None` when the path is too long for a unix socket
    /// (then only TCP is available).
    pub fn socket_dir(&self) -> Option<&Path> {
        self.socket_dir.as_deref()
    }

    /// Server log (all runs, appended), `DIR/postgres.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Dir holding the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Pid of the running postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Creates a database with the `createdb` client from the bin dir.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        let out = tokio::process::Command::new(self.bin_dir.join("createdb"))
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("--")
            .arg(name)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io("run createdb", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                cmd: "createdb".to_string(),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Fast shutdown: SIGINT, wait up to 20 s, then SIGKILL. Reaps.
    pub async fn stop(&mut self) -> Result<()> {
        self.proc.terminate(Signal::SIGINT, STOP_GRACE, true).await
    }

    /// Crash: SIGKILL the postmaster and its backends, reap, and wait until
    /// the backends are gone (so the port and shared memory are released).
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill(true)
    }

    /// Stops the server if running, then starts it again on the same port
    /// with the same data dir (runs crash recovery after a kill).
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

    /// True while the postmaster runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.proc.shutdown_blocking(Some(Signal::SIGQUIT), DROP_GRACE, true);
        if self.proc.was_killed() {
            remove_sysv_segment(&self.data_dir());
        }
    }
}

/// After a kill the postmaster's small SysV shared memory segment stays
/// (a restart recycles it). When no restart follows, remove it so repeated
/// kill-and-drop test runs do not exhaust `kernel.shmmni`. Best effort.
fn remove_sysv_segment(data: &Path) {
    // postmaster.pid line 7: "<key> <shmid>"
    let Ok(pidfile) = fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(shmid) = pidfile
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return;
    };
    let res = Command::new("ipcrm")
        .arg("-m")
        .arg(shmid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    tracing::debug!(
        shmid,
        ok = res.is_ok_and(|s| s.success()),
        "removed shared memory segment"
    );
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("bin_dir", &self.bin_dir)
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("pid", &self.proc.pid())
            .finish()
    }
}

fn checked_bin_dir(dir: &Path) -> Option<PathBuf> {
    (fsutil::is_executable(&dir.join("initdb")) && fsutil::is_executable(&dir.join("postgres")))
        .then(|| dir.to_path_buf())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Highest-versioned `/usr/lib/postgresql/<version>/bin` with initdb.
fn highest_debian_bin_dir() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            Some((version, checked_bin_dir(&e.path().join("bin"))?))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, dir)| dir)
}

/// Major version of the server in `bin_dir` (e.g. "15"), cached.
fn pg_major(bin_dir: &Path) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(bin_dir).cloned()) {
        return Ok(v);
    }
    let out = fsutil::run(Command::new(bin_dir.join("postgres")).arg("-V"))?;
    let major =
        parse_major(&out).ok_or_else(|| Error::Invalid(format!("unexpected postgres version: {}", out.trim())))?;
    if let Ok(mut c) = cache.lock() {
        c.insert(bin_dir.to_path_buf(), major.clone());
    }
    Ok(major)
}

/// "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15"
fn parse_major(version: &str) -> Option<String> {
    let (_, rest) = version.split_once(')')?;
    let major: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

/// Blocking: prepares `dir` (ownership, run dir, log) and the data dir.
fn prepare(bin_dir: &Path, dir: &Path, run_as: Option<RunAs>, init: &Init) -> Result<()> {
    if let Some(user) = run_as {
        fsutil::chown(dir, user)?;
        fsutil::ensure_traversable(dir, user)?;
    }
    let run = dir.join("run");
    fs::create_dir_all(&run).map_err(|e| Error::io_path("create dir", &run, e))?;
    let log = dir.join("postgres.log");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::io_path("create", &log, e))?;
    if let Some(user) = run_as {
        fsutil::chown(&run, user)?;
        fsutil::chown(&log, user)?;
    }
    let data = dir.join("data");
    if !data.join("PG_VERSION").exists() {
        let started = Instant::now();
        match init {
            Init::Initdb => initdb_into(bin_dir, &data, run_as, dir)?,
            Init::Template(root) => copy_template(bin_dir, root, &data, run_as)?,
            Init::TemplateOrInitdb(root) => {
                if let Err(e) = copy_template(bin_dir, root, &data, run_as) {
                    tracing::warn!(error = %e, "postgres template unusable, running initdb");
                    initdb_into(bin_dir, &data, run_as, dir)?;
                }
            }
        }
        tracing::debug!(data = %data.display(), elapsed_ms = started.elapsed().as_millis() as u64, "data dir created");
    }
    if let Some(user) = run_as
        && fsutil::owner(&data)? != user.uid
    {
        fsutil::chown_recursive(&data, user)?;
    }
    Ok(())
}

/// Fails unless `data` is missing or an empty dir (which is removed).
fn clear_empty_data_dir(data: &Path) -> Result<()> {
    match fs::read_dir(data) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_path("read dir", data, e)),
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "{} is not empty but has no PG_VERSION, remove it",
                    data.display()
                )));
            }
            fs::remove_dir(data).map_err(|e| Error::io_path("remove", data, e))
        }
    }
}

fn initdb_into(bin_dir: &Path, data: &Path, run_as: Option<RunAs>, cwd: &Path) -> Result<()> {
    clear_empty_data_dir(data)?;
    initdb(bin_dir, data, run_as, cwd)
}

fn initdb(bin_dir: &Path, data: &Path, run_as: Option<RunAs>, cwd: &Path) -> Result<()> {
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
        .args(["--locale=C", "--no-sync"])
        .current_dir(cwd)
        .env("LC_ALL", "C");
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    fsutil::run(&mut cmd).map(drop)
}

/// Copies the template for `bin_dir`'s major version to `data` (via a temp
/// name and rename, so a half copy is never taken for a data dir).
fn copy_template(bin_dir: &Path, root: &Path, data: &Path, run_as: Option<RunAs>) -> Result<()> {
    let template = ensure_template(bin_dir, root, run_as)?;
    clear_empty_data_dir(data)?;
    let tmp = data.with_file_name("data.tmp");
    fsutil::remove_if_exists(&tmp)?;
    fsutil::run(Command::new("cp").arg("-a").arg(&template).arg(&tmp))?;
    fs::rename(&tmp, data).map_err(|e| Error::io_path("rename to", data, e))
}

/// Returns `root/pg-template-<major>`, creating it with initdb once.
fn ensure_template(bin_dir: &Path, root: &Path, run_as: Option<RunAs>) -> Result<PathBuf> {
    let root = fsutil::create_dir(root)?;
    if let Some(user) = run_as {
        fsutil::ensure_traversable(&root, user)?;
    }
    let major = pg_major(bin_dir)?;
    let template = root.join(format!("pg-template-{major}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let lock_path = root.join(format!("pg-template-{major}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io_path("open", &lock_path, e))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::sys(format!("lock {}", lock_path.display()), e))?;
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let started = Instant::now();
    let tmp = root.join(format!("pg-template-{major}.tmp"));
    fsutil::remove_if_exists(&tmp)?;
    fsutil::remove_if_exists(&template)?;
    fs::create_dir(&tmp).map_err(|e| Error::io_path("create dir", &tmp, e))?;
    if let Some(user) = run_as {
        fsutil::chown(&tmp, user)?;
    }
    initdb(bin_dir, &tmp, run_as, &root)?;
    fs::rename(&tmp, &template).map_err(|e| Error::io_path("rename to", &template, e))?;
    tracing::info!(template = %template.display(), elapsed_ms = started.elapsed().as_millis() as u64, "postgres template created");
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_version() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17devel").as_deref(), Some("17"));
        assert_eq!(parse_major("garbage"), None);
    }
}
