//! Running a command as the agent does for event handlers and script checks: in a
//! process group of its own, with a timeout, its output captured up to a bound.
//!
//! [`run`] feeds the stdin given, reads the first [`OUTPUT_LIMIT`] bytes of stdout and
//! stderr, and waits for the process. A run still going at its deadline, or when the
//! shutdown token fires, is killed with its whole process group and reaped. Output is
//! read for at most [`OUTPUT_GRACE`] after the process exits, so a background process
//! that keeps the pipes open does not hold the caller up; processes left behind after an
//! exit are not killed.

use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes of a run's stdout, and of its stderr, kept.
pub const OUTPUT_LIMIT: usize = 4096;

/// How long output is still read after a process exited (or was killed).
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long to wait for a killed process to be reaped.
const REAP_BOUND: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug)]
pub enum End {
    /// The process exited (or waiting for it failed).
    Exited(std::io::Result<ExitStatus>),
    /// It ran past its timeout and was killed with its group.
    TimedOut,
    /// The shutdown token fired; it was killed with its group.
    Shutdown,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub end: End,
    /// The head of its stdout.
    pub stdout: Captured,
    /// The head of its stderr.
    pub stderr: Captured,
}

/// Runs `command` (its program, arguments and environment set by the caller) with
/// `input` on stdin, until it exits, `timeout` passes or `shutdown` fires. Errs only
/// when the process cannot be started.
pub async fn run(
    mut command: Command,
    input: Vec<u8>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> std::io::Result<Finished> {
    command
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id();

    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    let end = {
        let stdin = child.stdin.take();
        let out = child.stdout.take();
        let err = child.stderr.take();
        let mut io = pin!(async {
            tokio::join!(
                feed(stdin, input),
                capture(out, &mut stdout),
                capture(err, &mut stderr),
            )
        });
        let mut io_done = false;
        let deadline = Instant::now() + timeout;
        let end = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break End::Shutdown,
                () = tokio::time::sleep_until(deadline) => break End::TimedOut,
                status = child.wait() => break End::Exited(status),
                _ = &mut io, if !io_done => io_done = true,
            }
        };
        if !matches!(end, End::Exited(_)) {
            // `wait` has not returned, so the child is not reaped and its id, which is
            // its group's, cannot have been reused.
            kill_group(pid);
            match tokio::time::timeout(REAP_BOUND, child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("reaping a killed process: {e}"),
                Err(_) => tracing::warn!("a killed process did not exit"),
            }
        }
        if !io_done {
            // Background processes may hold the pipes open; what they write later is
            // not read.
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut io).await;
        }
        end
    };
    Ok(Finished {
        end,
        stdout,
        stderr,
    })
}

/// Writes `input` to the process's stdin and closes it. A process that exits without
/// reading it is no error.
async fn feed(stdin: Option<ChildStdin>, input: Vec<u8>) {
    let Some(mut stdin) = stdin else { return };
    if input.is_empty() {
        return;
    }
    match stdin.write_all(&input).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::debug!("a process did not read all of its stdin");
        }
        Err(e) => tracing::warn!("writing to a process's stdin: {e}"),
    }
}

/// The first [`OUTPUT_LIMIT`] bytes of an output, and how long it was.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    head: Vec<u8>,
    total: usize,
}

impl Captured {
    /// Keeps what fits of `bytes`, counts all of them.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT - self.head.len();
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.total += bytes.len();
    }

    /// The bytes kept.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The head as text, trailing blanks trimmed, with a note of how many bytes more
    /// there were.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.head);
        let text = text.trim_end();
        match self.total - self.head.len() {
            0 => text.to_string(),
            more => format!("{text}... ({more} more bytes)"),
        }
    }
}

/// Reads `reader` to its end, keeping the head in `into`.
async fn capture(reader: Option<impl AsyncRead + Unpin>, into: &mut Captured) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => into.push(&buf[..n]),
        }
    }
}

/// Sends SIGKILL to the process group `pid` leads.
fn kill_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("killing the process group {pgid}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    #[tokio::test]
    async fn output_is_captured_up_to_the_limit() {
        let shutdown = CancellationToken::new();
        let run = run(
            sh("head -c 10000 /dev/zero | tr '\\0' x; echo oops >&2; exit 3"),
            Vec::new(),
            Duration::from_secs(10),
            &shutdown,
        )
        .await
        .unwrap();
        assert!(matches!(run.end, End::Exited(Ok(s)) if s.code() == Some(3)));
        assert_eq!(run.stdout.head().len(), OUTPUT_LIMIT);
        assert!(run.stdout.text().ends_with("... (5904 more bytes)"));
        assert_eq!(run.stderr.text(), "oops");
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed() {
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let run = run(
            sh("cat; sleep 30"),
            b"in".to_vec(),
            Duration::from_millis(200),
            &shutdown,
        )
        .await
        .unwrap();
        assert!(matches!(run.end, End::TimedOut));
        assert_eq!(run.stdout.text(), "in");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
