use std::path::Path;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path or process failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A required binary or directory could not be found.
    #[error("{0} not found")]
    NotFound(String),
    /// The server process exited before it reported readiness.
    #[error("{name} exited before ready ({status}); log tail:\n{tail}")]
    Exited {
        name: &'static str,
        status: String,
        tail: String,
    },
    /// The server could not bind its port because something else holds it.
    #[error("{name} port {port} already in use; log tail:\n{tail}")]
    PortInUse {
        name: &'static str,
        port: u16,
        tail: String,
    },
    /// The server did not report readiness before the deadline.
    #[error("{name} not ready after {secs}s; log tail:\n{tail}")]
    NotReady {
        name: &'static str,
        secs: u64,
        tail: String,
    },
    /// A helper command (initdb, cp, createdb, ...) failed.
    #[error("{cmd} failed ({status}): {output}")]
    Command {
        cmd: String,
        status: String,
        output: String,
    },
    /// Running as root, but there is no `postgres` system user to run postgres as.
    #[error("running as root but no `postgres` system user exists to run postgres as")]
    NoPostgresUser,
    /// A directory or file is in a state this crate cannot work with.
    #[error("{0}")]
    Invalid(String),
    /// A system call (signal, user lookup, lock) failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    /// A background blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io_path(what: &str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            what: format!("{what} {}", path.display()),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}
