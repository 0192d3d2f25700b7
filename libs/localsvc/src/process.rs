//! Owned child process: spawn with log redirection, wait for a readiness line
//! in the log, signal, kill and reap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

const POLL: Duration = Duration::from_millis(10);

/// A child process we own. `child` is `None` when nothing is running.
pub(crate) struct Proc {
    name: &'static str,
    child: Option<Child>,
    /// Set when the last run ended by SIGKILL from us; cleared when a new
    /// run becomes ready.
    killed: bool,
}

impl Proc {
    pub(crate) fn new(name: &'static str) -> Self {
        Proc {
            name,
            child: None,
            killed: false,
        }
    }

    /// True when the last run was ended by SIGKILL (no clean shutdown).
    pub(crate) fn was_killed(&self) -> bool {
        self.killed
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns `cmd` with stdin null and stdout/stderr appended to `log`.
    /// Returns the log length before spawning, where the new output starts.
    pub(crate) fn spawn(&mut self, cmd: &mut Command, log: &Path) -> Result<u64> {
        if self.is_running() {
            return Err(Error::Invalid(format!("{} already running", self.name)));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io_path("open log", log, e))?;
        let offset = file.metadata().map_err(|e| Error::io_path("stat log", log, e))?.len();
        let err = file
            .try_clone()
            .map_err(|e| Error::io_path("clone log handle", log, e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("spawn {}", cmd.get_program().display()), e))?;
        tracing::debug!(name = self.name, pid = child.id(), "spawned");
        self.child = Some(child);
        Ok(offset)
    }

    /// Polls the log from `offset` until it contains `marker`. Fails when the
    /// process exits or the deadline passes; the process is killed and reaped
    /// on failure.
    pub(crate) async fn wait_ready(
        &mut self,
        log: &Path,
        offset: u64,
        marker: &str,
        timeout: Duration,
        port: u16,
        kill_children: bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let marker = marker.as_bytes();
        let mut buf = Vec::new();
        let mut scanned = 0usize;
        loop {
            read_from(log, offset + buf.len() as u64, &mut buf);
            if contains(&buf[scanned..], marker) {
                self.killed = false;
                return Ok(());
            }
            scanned = buf.len().saturating_sub(marker.len());
            let exited = match self.child.as_mut() {
                None => Some("not running".to_string()),
                Some(child) => child
                    .try_wait()
                    .map_err(|e| Error::io(format!("wait for {}", self.name), e))?
                    .map(|s| s.to_string()),
            };
            if let Some(status) = exited {
                self.child = None;
                read_from(log, offset + buf.len() as u64, &mut buf);
                let tail = tail(&buf);
                if tail.to_ascii_lowercase().contains("address already in use") {
                    return Err(Error::PortInUse {
                        name: self.name,
                        port,
                        tail,
                    });
                }
                return Err(Error::Exited {
                    name: self.name,
                    status,
                    tail,
                });
            }
            if Instant::now() >= deadline {
                // Best effort: the timeout is the error to report.
                if let Err(e) = self.kill(kill_children) {
                    tracing::warn!(name = self.name, error = %e, "kill after timeout failed");
                }
                read_from(log, offset + buf.len() as u64, &mut buf);
                return Err(Error::NotReady {
                    name: self.name,
                    secs: timeout.as_secs(),
                    tail: tail(&buf),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// True if the child is running; reaps it if it has exited.
    pub(crate) fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::debug!(name = self.name, %status, "exited");
                self.child = None;
                false
            }
            Err(e) => {
                tracing::warn!(name = self.name, error = %e, "try_wait failed");
                true
            }
        }
    }

    /// Sends `sig`, waits up to `grace` for exit, then kills.
    pub(crate) async fn terminate(&mut self, sig: Signal, grace: Duration, kill_children: bool) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.signal(sig)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!(name = self.name, signal = %sig, "no exit within grace period, killing");
        self.kill(kill_children)
    }

    /// SIGKILL and reap. With `kill_children`, the process is stopped first,
    /// its direct children are collected and killed as well, and we wait
    /// until they are gone (postgres backends outliving the postmaster would
    /// keep shared memory attached and block a restart).
    pub(crate) fn kill(&mut self, kill_children: bool) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let mut children = Vec::new();
        if !matches!(child.try_wait(), Ok(Some(_))) {
            if kill_children {
                // Freeze it so it cannot fork new children while we look.
                if let Err(e) = send(pid, Signal::SIGSTOP) {
                    tracing::warn!(name = self.name, error = %e, "stop before kill failed");
                }
                children = children_of(pid);
                if !children.is_empty() {
                    become_subreaper();
                }
            }
            if let Err(e) = child.kill() {
                self.child = Some(child);
                return Err(Error::io(format!("kill {}", self.name), e));
            }
            for &c in &children {
                if let Err(e) = send(c, Signal::SIGKILL) {
                    tracing::warn!(name = self.name, pid = c, error = %e, "kill child failed");
                }
            }
            self.killed = true;
        }
        child.wait().map_err(|e| Error::io(format!("reap {}", self.name), e))?;
        tracing::debug!(name = self.name, pid, children = children.len(), "killed");
        wait_gone(&children, Duration::from_secs(5));
        Ok(())
    }

    /// For `Drop`: optional graceful signal with a blocking bounded wait, then
    /// kill. Never fails.
    pub(crate) fn shutdown_blocking(&mut self, sig: Option<Signal>, grace: Duration, kill_children: bool) {
        if !self.is_running() {
            return;
        }
        if let Some(sig) = sig
            && self.signal(sig).is_ok()
        {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !self.is_running() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Err(e) = self.kill(kill_children) {
            tracing::warn!(name = self.name, error = %e, "kill on drop failed");
        }
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        match self.pid() {
            Some(pid) => send(pid, sig),
            None => Ok(()),
        }
    }
}

fn send(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| Error::Invalid(format!("bad pid {pid}")))?;
    match kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::sys(format!("send {sig} to {pid}"), e)),
    }
}

/// Direct children of `pid` per /proc (empty where /proc is unavailable).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_stat(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// `(state, ppid)` from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parens.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// Orphaned grandchildren (postgres backends of a killed postmaster) are
/// reparented to us instead of init, so we can reap them and leave no
/// zombies behind where init does not reap (some containers). Only set once
/// a kill with children happens; it is a process-wide flag.
#[cfg(target_os = "linux")]
fn become_subreaper() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::debug!(error = %e, "cannot become child subreaper");
        }
    });
}

#[cfg(not(target_os = "linux"))]
fn become_subreaper() {}

/// Waits (bounded) until `pids` are gone, reaping those reparented to us.
fn wait_gone(pids: &[u32], timeout: Duration) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + timeout;
    let mut left: Vec<u32> = pids.to_vec();
    loop {
        left.retain(|&p| {
            let Ok(raw) = i32::try_from(p) else {
                return false;
            };
            match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => true,
                Ok(_) => false,
                // Not our child: gone once it is no longer alive.
                Err(_) => pid_alive(p),
            }
        });
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(pids = ?left, "child processes still alive after kill");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Appends the bytes of `path` from `pos` to `buf` (best effort).
fn read_from(path: &Path, pos: u64, buf: &mut Vec<u8>) {
    let Ok(mut file) = File::open(path) else {
        return;
    };
    if file.seek(SeekFrom::Start(pos)).is_ok() {
        let _ = file.read_to_end(buf);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Last lines of the output, for error messages.
fn tail(buf: &[u8]) -> String {
    const LINES: usize = 30;
    let text = String::from_utf8_lossy(buf);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LINES);
    let tail = lines[start..].join("\n");
    if tail.is_empty() { "(empty)".to_string() } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_marker() {
        assert!(contains(b"abc Server is ready\n", b"Server is ready"));
        assert!(!contains(b"Server is rea", b"Server is ready"));
    }

    #[test]
    fn own_stat() {
        let (state, ppid) = proc_stat(std::process::id()).expect("stat");
        assert_ne!(state, 'Z');
        assert!(ppid > 0);
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn tail_is_bounded() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(text.as_bytes());
        assert!(t.starts_with("line 70"));
        assert!(t.ends_with("line 99"));
        assert_eq!(tail(b""), "(empty)");
    }
}
