//! Local service processes for tests and `meshctl dev`.
//!
//! Starts a real `nats-server` (with JetStream) and a real PostgreSQL server
//! as child processes on free ports in given folders, and can stop, kill and
//! restart them (same port, same data) for fault tests.
//!
//! Every server owns its child process: `stop`, `kill` and `Drop` reap it,
//! so no process or zombie is left behind when the handle goes away.

mod error;
mod fsutil;
mod nats;
mod postgres;
mod process;

pub use error::{Error, Result};
pub use nats::{NATS_BIN_ENV, NatsOptions, NatsServer};
pub use postgres::{PG_BIN_DIR_ENV, PgOptions, Postgres};

/// Returns a free TCP port on 127.0.0.1 that no other caller of this function,
/// in this process or any other on the machine, will be handed while this process lives.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), so the
/// outgoing connections of busy tests cannot take one between now and its `bind`.
/// Each port handed out is reserved with an exclusive lock on a file in
/// `$TMPDIR/mediamesh-ports/`, held until the process exits (the kernel drops it then,
/// even after a crash), so concurrent test processes never pick the same one.
/// Falls back to a kernel-chosen port if no reservation can be made.
pub fn free_port() -> std::io::Result<u16> {
    ports::reserve().or_else(|_| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        Ok(listener.local_addr()?.port())
    })
}

mod ports {
    use std::fs::{File, OpenOptions};
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;

    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;

    /// Lock files held for the life of the process.
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

    pub(super) fn reserve() -> std::io::Result<u16> {
        let dir = std::env::temp_dir().join("mediamesh-ports");
        std::fs::create_dir_all(&dir)?;
        let start = (RandomState::new().hash_one(std::process::id()) % u64::from(COUNT)) as u16;
        for i in 0..COUNT {
            let port = FIRST + (start + i) % COUNT;
            let path = dir.join(port.to_string());
            let file = match OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
                Ok(file) => file,
                Err(_) => match File::open(&path) {
                    Ok(file) => file,
                    Err(_) => continue,
                },
            };
            if file.try_lock().is_err() {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return Ok(port);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free port left to reserve",
        ))
    }
}
