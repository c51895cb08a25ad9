//! Runs a configured handler: an executable that reads the payload on
//! stdin and writes the result on stdout; its stderr lines are the job's
//! log (redacted, streamed back). It runs in a process group of its own
//! with a clean environment (PATH, HOME, LANG, the job's variables and the
//! credentials it needs: never the agent's own secrets), and is stopped —
//! SIGTERM, then SIGKILL after a grace period — on cancel or deadline.

use std::{path::Path, process::Stdio, time::Duration};

use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
};
use tokio_util::sync::CancellationToken;

use super::{Failure, MAX_RESULT};

/// Between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// Exit code that means "bad input, do not retry" (EX_DATAERR).
const EX_DATAERR: i32 = 65;

/// What a handler gets besides its payload.
pub struct Run<'a> {
    pub program: &'a Path,
    pub payload: &'a [u8],
    pub env: Vec<(String, String)>,
    pub deadline: Duration,
    pub cancel: CancellationToken,
    /// Each stderr line, as it comes.
    pub on_line: &'a (dyn Fn(String) + Send + Sync),
}

/// Runs the handler to its end; the result or why it failed.
pub async fn run(r: Run<'_>) -> Result<Vec<u8>, Failure> {
    let mut cmd = Command::new(r.program);
    cmd.env_clear();
    for var in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    cmd.envs(r.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Failure {
        error: format!(
            "cannot start the handler {}: {e}; check the path and that it is executable",
            r.program.display()
        ),
        retryable: false,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let payload = r.payload.to_vec();
    // The handler may not read its input: a closed pipe is not an error.
    let feed = async move {
        if let Some(mut i) = stdin.take() {
            let _ = i.write_all(&payload).await;
        }
    };
    let collect = async move {
        let mut out = Vec::new();
        if let Some(o) = stdout {
            let _ = o.take(MAX_RESULT as u64 + 1).read_to_end(&mut out).await;
        }
        out
    };
    let on_line = r.on_line;
    let last_line = std::sync::Mutex::new(String::new());
    let last = || last_line.lock().map(|l| l.clone()).unwrap_or_default();
    let log = async {
        if let Some(e) = stderr {
            let mut lines = BufReader::new(e).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = last_line.lock() {
                    l.clone_from(&line);
                }
                on_line(line);
            }
        }
    };
    let io = async { tokio::join!(feed, collect, log).1 };
    let waited = async { tokio::join!(io, child.wait()) };
    let stop = |sig| {
        if let Some(pid) = pid {
            let _ = signal::killpg(pid, sig);
        }
    };
    tokio::pin!(waited);
    let stopped_because = tokio::select! {
        (out, status) = &mut waited => return finish(out, status, &last()),
        () = r.cancel.cancelled() => "the job was cancelled",
        () = tokio::time::sleep(r.deadline) => "the handler ran past the job's deadline",
    };
    stop(signal::Signal::SIGTERM);
    if tokio::time::timeout(GRACE, &mut waited).await.is_err() {
        stop(signal::Signal::SIGKILL);
        let _ = tokio::time::timeout(GRACE, &mut waited).await;
    }
    Err(Failure {
        error: format!("{stopped_because}; the handler was stopped"),
        retryable: true,
    })
}

fn finish(
    out: Vec<u8>,
    status: std::io::Result<std::process::ExitStatus>,
    last_line: &str,
) -> Result<Vec<u8>, Failure> {
    let status = status.map_err(|e| Failure {
        error: format!("cannot wait for the handler: {e}"),
        retryable: true,
    })?;
    let hint = if last_line.is_empty() {
        String::new()
    } else {
        format!("; its last log line: {last_line}")
    };
    match status.code() {
        Some(0) if out.len() > MAX_RESULT => Err(Failure {
            error: format!(
                "the handler wrote more than {MAX_RESULT} bytes of result; write large output elsewhere"
            ),
            retryable: false,
        }),
        Some(0) => Ok(out),
        Some(EX_DATAERR) => Err(Failure {
            error: format!("the handler refused its input (exit code 65){hint}"),
            retryable: false,
        }),
        Some(code) => Err(Failure {
            error: format!("the handler exited with code {code}{hint}"),
            retryable: true,
        }),
        None => Err(Failure {
            error: format!("the handler was killed by a signal{hint}"),
            retryable: true,
        }),
    }
}
