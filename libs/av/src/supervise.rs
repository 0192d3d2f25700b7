//! The supervisor every child goes through: spawn in its own process group, read stdout and a
//! bounded tail of stderr, enforce the time budget and the cancellation token, kill the group
//! and reap, and turn exit statuses into error codes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use mediamesh_core::{Error, ErrorCode, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Progress, Tools};

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 20;
/// Bytes of stderr kept for error messages (and the longest line kept, cut beyond that).
const TAIL_BYTES: usize = 2048;
/// The longest `-progress` line read; longer ones are cut (real ones are under 40 bytes).
const PROGRESS_LINE_BYTES: usize = 256;
/// The shortest gap between two progress reports (the final one always goes out).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How long to wait for a child to be reaped after SIGKILL before leaving it to tokio.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// The most `-version` output read.
const VERSION_BYTES: usize = 64 * 1024;

/// Stderr lines (lowercase) that mean the input is corrupt, truncated or not media at all.
const BAD_INPUT_HINTS: &[&str] = &[
    "invalid data found when processing input",
    "moov atom not found",
    "does not contain any stream",
    "could not find codec parameters",
    "partial file",
    "invalid nal unit",
    "error while decoding",
    "error splitting the input",
    "corrupt",
    "truncat",
    "end of file",
    "header missing",
    "error reading header",
    "invalid frame dimensions",
    "matches no streams",
];

/// A tool as named in messages, with the variable that sets its path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ToolName {
    pub name: &'static str,
    pub env: &'static str,
}

pub(crate) const FFMPEG: ToolName = ToolName {
    name: "ffmpeg",
    env: "MM_FFMPEG",
};

pub(crate) const FFPROBE: ToolName = ToolName {
    name: "ffprobe",
    env: "MM_FFPROBE",
};

/// The time one operation may take, shared by the children it runs one after the other.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    deadline: Instant,
    total: Duration,
}

impl Budget {
    pub fn new(total: Duration) -> Self {
        let now = Instant::now();
        // A budget too large to add is as good as none: a year.
        let deadline = now
            .checked_add(total)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        Self { deadline, total }
    }
}

/// The last lines a child wrote to stderr, bounded however much it writes, and whether any
/// line (kept or not) said the input is bad.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    splitter: LineSplitter,
    /// A line said the input is corrupt, truncated or not media.
    pub bad_input: bool,
    /// A line said the input file ends early (`partial file`): ffmpeg goes on and exits 0.
    pub truncated: bool,
    /// A line said there is no decoder for a stream.
    pub no_decoder: bool,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let mut done = Vec::new();
        self.splitter.push(bytes, TAIL_BYTES, &mut done);
        for line in done {
            self.add_line(line);
        }
    }

    fn finish(&mut self) {
        if let Some(line) = self.splitter.finish() {
            self.add_line(line);
        }
    }

    fn add_line(&mut self, line: String) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let lower = line.to_ascii_lowercase();
        if BAD_INPUT_HINTS.iter().any(|hint| lower.contains(hint)) {
            self.bad_input = true;
        }
        if lower.contains("partial file") {
            self.truncated = true;
        }
        if lower.contains("decoder (codec") && lower.contains("not found") {
            self.no_decoder = true;
        }
        self.bytes += line.len();
        self.lines.push_back(line.to_owned());
        while (self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES) && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Reads a child's stderr to its end (or to the first read error).
    async fn read_from(&mut self, mut stream: impl AsyncRead + Unpin) {
        let mut buf = vec![0; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.push(&buf[..n]),
            }
        }
        self.finish();
    }

    /// The kept lines, one per line, or a note that there were none.
    pub fn text(&self) -> String {
        if self.lines.is_empty() {
            return "(nothing on stderr)".to_owned();
        }
        self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Splits a byte stream into lines at `\n` and `\r` (ffmpeg redraws status lines with `\r`),
/// keeping at most a given number of bytes of each.
#[derive(Debug, Default)]
struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], max_line: usize, done: &mut Vec<String>) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if let Some(line) = self.finish() {
                    done.push(line);
                }
            } else if self.line.len() < max_line {
                self.line.push(b);
            }
        }
    }

    fn finish(&mut self) -> Option<String> {
        if self.line.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        Some(line)
    }
}

/// What a child that exited 0 left behind.
pub(crate) struct Finished<T> {
    pub output: T,
    pub stderr: Tail,
}

/// A spawned child whose whole process group is killed when this is dropped before the child
/// was reaped (the future running it was dropped, or an early return).
struct Group {
    child: Child,
}

impl Group {
    /// SIGKILL to the group, unless the child was reaped already: its pid (the group id) is
    /// then no longer ours to signal.
    fn kill(&self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // ESRCH (already gone) is fine.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    async fn kill_and_reap(&mut self, tool: ToolName) {
        self.kill();
        match tokio::time::timeout(REAP_GRACE, self.child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(tool = tool.name, error = %e, "cannot reap child"),
            Err(_) => tracing::warn!(tool = tool.name, "child still running after SIGKILL"),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Ended<T> {
    Done(Result<(T, ExitStatus)>),
    Cancelled,
    TimedOut,
}

/// Runs `program` with `args`, giving its stdout to `consume` (with the child's pid) while
/// keeping the tail of its stderr.
///
/// Returns once the child is reaped, or after it was sent SIGKILL and reaped: on timeout, on
/// cancellation, or when `consume` fails (which it should when the output grows past what the
/// caller accepts). `bad` starts the `BAD_INPUT` message when stderr says the input is bad.
pub(crate) async fn supervise<T, F, Fut>(
    tool: ToolName,
    program: &Path,
    args: &[OsString],
    budget: Budget,
    cancel: &CancellationToken,
    bad: &str,
    consume: F,
) -> Result<Finished<T>>
where
    F: FnOnce(ChildStdout, u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    if cancel.is_cancelled() {
        return Err(cancelled(tool));
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let child = command.spawn().map_err(|e| spawn_error(tool, program, &e))?;
    let mut group = Group { child };
    let pid = group.child.id().unwrap_or_default();
    let (Some(stdout), Some(stderr)) = (group.child.stdout.take(), group.child.stderr.take()) else {
        group.kill_and_reap(tool).await;
        return Err(Error::internal(format!("{}: no pipes to the child", tool.name)));
    };
    tracing::debug!(tool = tool.name, pid, "started");

    let mut tail = Tail::default();
    let ended = {
        let child = &mut group.child;
        let tail = &mut tail;
        let work = async move {
            let (output, ()) = tokio::try_join!(consume(stdout, pid), async {
                tail.read_from(stderr).await;
                Ok::<(), Error>(())
            })?;
            // Both pipes are closed: the child is exiting. Nothing may follow this wait in the
            // future, so that a reaped child always ends the select below as `Done`.
            let status = child
                .wait()
                .await
                .map_err(|e| Error::internal(format!("cannot wait for {}: {e}", tool.name)))?;
            Ok((output, status))
        };
        tokio::select! {
            biased;
            result = work => Ended::Done(result),
            () = cancel.cancelled() => Ended::Cancelled,
            () = tokio::time::sleep_until(budget.deadline) => Ended::TimedOut,
        }
    };

    match ended {
        Ended::Done(Ok((output, status))) if status.success() => Ok(Finished { output, stderr: tail }),
        Ended::Done(Ok((_, status))) => Err(exit_error(tool, bad, status, &tail)),
        Ended::Done(Err(e)) => {
            group.kill_and_reap(tool).await;
            Err(e)
        }
        Ended::Cancelled => {
            group.kill_and_reap(tool).await;
            tracing::debug!(tool = tool.name, pid, "killed: cancelled");
            Err(cancelled(tool))
        }
        Ended::TimedOut => {
            group.kill_and_reap(tool).await;
            tracing::debug!(tool = tool.name, pid, "killed: timed out");
            Err(Error::new(
                ErrorCode::Timeout,
                format!("{} did not finish within {} ms", tool.name, budget.total.as_millis()),
            ))
        }
    }
}

fn cancelled(tool: ToolName) -> Error {
    Error::new(ErrorCode::Cancelled, format!("{} was cancelled", tool.name))
}

fn spawn_error(tool: ToolName, program: &Path, e: &io::Error) -> Error {
    let name = tool.name;
    let at = program.display();
    let env = tool.env;
    match e.kind() {
        io::ErrorKind::NotFound => Error::internal(format!(
            "{name} not found at {at}: install it (apt-get install ffmpeg) or set {env}"
        )),
        io::ErrorKind::PermissionDenied => Error::internal(format!(
            "{name} at {at} is not executable: fix its permissions or set {env}"
        )),
        _ => Error::internal(format!("cannot start {name} at {at}: {e}")),
    }
}

/// The error for a child that exited non-zero or was killed by a signal it did not get from
/// us (a crash).
fn exit_error(tool: ToolName, bad: &str, status: ExitStatus, tail: &Tail) -> Error {
    let name = tool.name;
    let text = tail.text();
    if let Some(signal) = status.signal() {
        return Error::internal(format!("{name} crashed (signal {signal}): {text}"));
    }
    if tail.no_decoder {
        return Error::unsupported(format!("no decoder for the input's codec: {text}"));
    }
    if tail.bad_input {
        return Error::bad_input(format!("{bad}: {text}"));
    }
    let code = status.code().unwrap_or(-1);
    Error::internal(format!("{name} failed (exit code {code}): {text}"))
}

/// Reads all of stdout, failing (which kills the child) past `limit` bytes.
pub(crate) async fn collect(tool: ToolName, stdout: ChildStdout, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let max = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    stdout
        .take(max)
        .read_to_end(&mut out)
        .await
        .map_err(|e| Error::internal(format!("cannot read {} output: {e}", tool.name)))?;
    if out.len() > limit {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("{} printed more than {limit} bytes", tool.name),
        ));
    }
    Ok(out)
}

/// `<tool> -version`'s first line.
pub(crate) async fn version_line(
    tool: ToolName,
    program: &Path,
    budget: Budget,
    cancel: &CancellationToken,
) -> Result<String> {
    let args = [OsString::from("-version")];
    let bad = "unexpected -version output";
    let finished = supervise(tool, program, &args, budget, cancel, bad, |out, _| {
        collect(tool, out, VERSION_BYTES)
    })
    .await?;
    let text = String::from_utf8_lossy(&finished.output);
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Error::internal(format!("{} at {} printed no version", tool.name, program.display())))
}

/// Runs ffmpeg with the supervision flags in front of `args`, reporting progress; returns
/// the stderr tail of a successful run (it may say the input was truncated).
pub(crate) async fn ffmpeg(
    tools: &Tools,
    args: &[OsString],
    expected_duration_s: Option<f64>,
    budget: Budget,
    cancel: &CancellationToken,
    progress: &(dyn Fn(Progress) + Send + Sync),
    bad: &str,
) -> Result<Tail> {
    let mut full: Vec<OsString> = [
        "-nostdin",
        "-hide_banner",
        "-y",
        "-v",
        "error",
        "-progress",
        "pipe:1",
        "-nostats",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    full.extend_from_slice(args);
    let finished = supervise(FFMPEG, &tools.ffmpeg, &full, budget, cancel, bad, |stdout, pid| {
        read_progress(stdout, pid, expected_duration_s, progress)
    })
    .await?;
    Ok(finished.stderr)
}

/// Reads `-progress pipe:1` output and reports it.
async fn read_progress(
    mut stdout: ChildStdout,
    pid: u32,
    expected_duration_s: Option<f64>,
    report: &(dyn Fn(Progress) + Send + Sync),
) -> Result<()> {
    let mut parser = ProgressParser::new(expected_duration_s, Some(pid));
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut buf = vec![0; 4096];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| Error::internal(format!("cannot read ffmpeg progress: {e}")))?;
        if n == 0 {
            break;
        }
        splitter.push(&buf[..n], PROGRESS_LINE_BYTES, &mut lines);
        for line in lines.drain(..) {
            if let Some(p) = parser.line(&line, Instant::now()) {
                report(p);
            }
        }
    }
    Ok(())
}

/// Turns `-progress` key=value lines into reports: one per block (a block ends with a
/// `progress=continue` or `progress=end` line), at most one per [`PROGRESS_INTERVAL`] except
/// the last.
#[derive(Debug)]
pub(crate) struct ProgressParser {
    expected_s: Option<f64>,
    pid: Option<u32>,
    out_us: Option<i64>,
    last: Option<Instant>,
}

impl ProgressParser {
    pub fn new(expected_duration_s: Option<f64>, pid: Option<u32>) -> Self {
        Self {
            expected_s: expected_duration_s.filter(|d| d.is_finite() && *d > 0.0),
            pid,
            out_us: None,
            last: None,
        }
    }

    pub fn line(&mut self, line: &str, now: Instant) -> Option<Progress> {
        let (key, value) = line.split_once('=')?;
        let value = value.trim();
        match key.trim() {
            // out_time_ms is in microseconds too (a long-standing ffmpeg quirk).
            "out_time_us" | "out_time_ms" => {
                if let Ok(us) = value.parse::<i64>()
                    && us >= 0
                {
                    self.out_us = Some(us);
                }
                None
            }
            "progress" => {
                let end = value == "end";
                if !end && self.last.is_some_and(|t| now < t + PROGRESS_INTERVAL) {
                    return None;
                }
                self.last = Some(now);
                Some(self.report(end))
            }
            _ => None,
        }
    }

    fn report(&self, end: bool) -> Progress {
        let done_s = self.out_us.map(|us| us as f64 / 1e6);
        let fraction = match (end, done_s, self.expected_s) {
            (true, _, _) => 1.0,
            (false, Some(done), Some(expected)) => (done / expected).clamp(0.0, 1.0),
            _ => 0.0,
        };
        let message = match (end, done_s, self.expected_s) {
            (true, _, _) => "done".to_owned(),
            (false, Some(done), Some(expected)) => format!("{done:.1} s of {expected:.1} s"),
            (false, Some(done), None) => format!("{done:.1} s"),
            (false, None, _) => "starting".to_owned(),
        };
        Progress {
            fraction: fraction as f32,
            message,
            pid: self.pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_within_the_byte_cap() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        tail.push(b"no newline at the end");
        tail.finish();
        let text = tail.text();
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(text.ends_with("line 999\nno newline at the end"), "{text}");
        assert!(!tail.bad_input);

        let mut tail = Tail::default();
        tail.push(&vec![b'x'; 10 * 1024 * 1024]);
        tail.push(b"\nmoov atom not found\n");
        assert!(tail.bad_input);
        assert!(tail.text().len() <= TAIL_BYTES + 1, "{}", tail.text().len());
        assert!(tail.text().ends_with("moov atom not found"));
    }

    #[test]
    fn tail_remembers_bad_input_after_it_scrolled_away() {
        let mut tail = Tail::default();
        tail.push(b"x.mp4: Invalid data found when processing input\r");
        for _ in 0..100 {
            tail.push(b"something else\n");
        }
        tail.finish();
        assert!(tail.bad_input);
        assert!(!tail.text().contains("Invalid data"));
    }

    #[test]
    fn progress_is_a_fraction_of_the_expected_duration_and_throttled() {
        let t0 = Instant::now();
        let mut p = ProgressParser::new(Some(10.0), Some(7));
        assert_eq!(p.line("frame=12", t0), None);
        assert_eq!(p.line("out_time_us=2500000", t0), None);
        let first = p.line("progress=continue", t0).expect("first block is reported");
        assert!((first.fraction - 0.25).abs() < 1e-6, "{first:?}");
        assert_eq!(first.pid, Some(7));
        assert_eq!(first.message, "2.5 s of 10.0 s");
        // A block 100 ms later is dropped, one 300 ms later is not.
        p.line("out_time_ms=3000000", t0);
        assert_eq!(p.line("progress=continue", t0 + Duration::from_millis(100)), None);
        p.line("out_time_us=N/A", t0);
        let later = p
            .line("progress=continue", t0 + Duration::from_millis(300))
            .expect("reported after the interval");
        assert!((later.fraction - 0.3).abs() < 1e-6, "{later:?}");
        // The end always goes out.
        let end = p
            .line("progress=end", t0 + Duration::from_millis(301))
            .expect("end is reported");
        assert_eq!(end.fraction, 1.0);

        let mut unknown = ProgressParser::new(None, None);
        unknown.line("out_time_us=99999999999", t0);
        assert_eq!(unknown.line("progress=continue", t0).map(|p| p.fraction), Some(0.0));
    }
}
