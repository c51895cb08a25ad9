//! The real binaries, started from next to this one (`cargo build
//! --release` puts them there), waited on through their JSON log lines.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// How long a process may take to start.
const START: Duration = Duration::from_secs(60);

/// A sibling binary.
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.parent().context("no parent directory")?.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing; build it with cargo build --release",
            p.display()
        );
    }
    Ok(p)
}

/// A child with its log lines flowing into a channel.
pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        // Bounded; lines beyond it are dropped once nobody waits (the
        // benchmark only waits for start-up lines).
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.try_send(v);
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits for a log line with this message.
    pub(crate) async fn wait_for(&mut self, message: &str) -> anyhow::Result<serde_json::Value> {
        let wait = async {
            while let Some(v) = self.lines.recv().await {
                if v["message"] == message {
                    return Some(v);
                }
            }
            None
        };
        match tokio::time::timeout(START, wait).await {
            Ok(Some(v)) => Ok(v),
            _ => bail!("no {message:?} log line within {START:?}"),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident memory, bytes (from /proc).
    pub(crate) fn rss(&self) -> u64 {
        rss_of(self.pid())
    }

    /// User + system CPU seconds so far (from /proc).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_of(self.pid())
    }
}

/// The fields of /proc/PID/stat after the command name (state is 0).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after.split_whitespace().map(str::to_owned).collect()
}

/// Resident memory of one process, bytes.
pub(crate) fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// User + system CPU seconds of one process (utime and stime are the 12th
/// and 13th fields after the command name), including its waited-for
/// children (cutime, cstime), so that forked helpers that ended count too.
pub(crate) fn cpu_of(pid: u32) -> f64 {
    let f = stat_fields(pid);
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

/// `root` and every process below it (peers fork per connection).
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                let ppid = stat_fields(pid)
                    .get(1)
                    .and_then(|p| p.parse::<u32>().ok())
                    .unwrap_or(0);
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    // Bounded: each round adds at least one pid or ends.
    for _ in 0..parent_of.len() {
        let before = out.len();
        for (pid, ppid) in &parent_of {
            if out.contains(ppid) && !out.contains(pid) {
                out.push(*pid);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// A control plane in `dir` on its defaults.
pub(crate) async fn control_plane(dir: &Path) -> anyhow::Result<(Proc, SocketAddr)> {
    let (p, grpc, _) = control_plane_with(dir, &[]).await?;
    Ok((p, grpc))
}

/// A control plane in `dir` with `extra` arguments; its gRPC and ops
/// addresses.
pub(crate) async fn control_plane_with(
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr, SocketAddr)> {
    let mut cmd = Command::new(binary("tether-controlplane")?);
    cmd.arg("--data-dir")
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--log-level", "warn,tether_controlplane=info"])
        .args(extra);
    let mut p = Proc::spawn(cmd)?;
    let ready = p.wait_for("control plane ready").await?;
    let grpc = ready["grpc"].as_str().context("no grpc address")?.parse()?;
    let ops = ready["ops"].as_str().context("no ops address")?.parse()?;
    Ok((p, grpc, ops))
}

/// An agent enrolled with `token`, dialling `endpoint`, allowed `allow`.
pub(crate) async fn agent(
    endpoint: &str,
    state: &Path,
    token: &str,
    allow: &str,
) -> anyhow::Result<Proc> {
    agent_with(endpoint, state, token, &["--allow", allow]).await
}

/// An agent enrolled with `token`, dialling `endpoint`, with `extra`
/// arguments.
pub(crate) async fn agent_with(
    endpoint: &str,
    state: &Path,
    token: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(binary("tether-agent")?);
    cmd.args(["--endpoint", endpoint, "--log-format", "json"])
        .args(extra)
        .args(["--log-level", "warn,tether_agent::session=info"])
        .arg("--state-dir")
        .arg(state)
        .env("TETHER_JOIN_TOKEN", token);
    let mut p = Proc::spawn(cmd)?;
    p.wait_for("attached").await?;
    Ok(p)
}

/// Runs tetherctl (next to this binary) and returns its stdout.
pub(crate) async fn tetherctl(
    endpoint: &str,
    data_dir: &Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = Command::new(binary("tetherctl")?)
        .args(["--endpoint", endpoint, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "tetherctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
