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

/// Returns a currently free TCP port on 127.0.0.1 (bind port 0, read it back).
///
/// The port is released before returning, so another process may grab it;
/// the `start` functions retry with a new port when the chosen one turns out
/// to be taken and no explicit port was requested.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
