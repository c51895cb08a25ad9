//! The peer tunnels Tether is measured against, each stood up on 127.0.0.1
//! in front of the same target, each with its two ends as separate
//! processes like a real deployment (the private side and the public side):
//!
//! - `ssh -L`: an OpenSSH client forwarding a local port through `sshd`;
//! - `stunnel`: a client-mode stunnel (plain in, TLS out) and a server-mode
//!   stunnel (TLS in, plain out to the target);
//! - `socat`: two plain TCP relays in a row (no encryption: the cost of
//!   relaying alone);
//! - `rathole`: its client dials its server over the noise transport and
//!   the server exposes the target's port, like Tether's agent and control
//!   plane.
//!
//! `scripts/install-bench-peers.sh` installs them; one that is not there is
//! reported as missing. Each end may be put behind the delay relay (`far`).

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// How long a peer may take to start.
const START: Duration = Duration::from_secs(30);
/// Where install-bench-peers.sh puts programs built from crates.io.
const TOOLS: &str = "/opt/tether-bench-tools/bin";

/// A running peer end.
pub(crate) struct End {
    child: Child,
}

impl End {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// A peer: its ends and the address clients connect to.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    pub(crate) entry: SocketAddr,
    pub(crate) ends: Vec<End>,
}

impl Peer {
    /// The root pids of its processes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.ends.iter().map(End::pid).collect()
    }
}

/// A free loopback port (bound and released: the peer binds it itself).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Drops ANSI colour codes (some peers colour their logs).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `cmd` and waits for a line (stdout or stderr) containing
/// `ready`; later lines are read and dropped.
async fn start(what: &str, mut cmd: Command, ready: &str) -> anyhow::Result<End> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {what} (scripts/install-bench-peers.sh installs it)"))?;
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let outputs: [Box<dyn AsyncRead + Unpin + Send>; 2] = [
        Box::new(child.stdout.take().context("no stdout")?),
        Box::new(child.stderr.take().context("no stderr")?),
    ];
    for out in outputs {
        let tx = tx.clone();
        // Ends with the process's output; lines nobody waits for are dropped.
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.try_send(plain(&l));
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let wait = async {
        while let Some(l) = rx.recv().await {
            if l.contains(ready) {
                return true;
            }
            if seen.len() < 50 {
                seen.push(l);
            }
        }
        false
    };
    match tokio::time::timeout(START, wait).await {
        Ok(true) => Ok(End { child }),
        _ => bail!(
            "{what} did not say {ready:?} within {START:?}; it said:\n{}",
            seen.join("\n")
        ),
    }
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line of `program args` (stdout, then stderr) that contains
/// `marker`, cut to its first `words` words.
async fn version_line(
    program: &str,
    args: &[&str],
    marker: &str,
    words: usize,
) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}; run scripts/install-bench-peers.sh"))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.contains(marker))
        .map(|l| {
            l.split_whitespace()
                .take(words)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .ok_or_else(|| format!("{program} printed no version"))
}

/// The version of each peer, or why it is missing.
pub(crate) async fn versions() -> Vec<(&'static str, Result<String, String>)> {
    let rathole = format!("{TOOLS}/rathole");
    vec![
        ("ssh", version_line("ssh", &["-V"], "OpenSSH", 1).await),
        (
            "stunnel",
            version_line("stunnel", &["-version"], "stunnel ", 2).await,
        ),
        (
            "socat",
            version_line("socat", &["-V"], "socat version", 3).await,
        ),
        (
            "rathole",
            // "Build Version: 0.5.0" on a line of its own.
            version_line(&rathole, &["--version"], "Build Version", 3)
                .await
                .map(|l| l.replace("Build Version:", "rathole")),
        ),
    ]
}

/// `ssh -L` through `sshd`; `hop` is where the client reaches sshd (sshd
/// itself, or a relay in front of it).
pub(crate) async fn ssh(
    dir: &Path,
    target: SocketAddr,
    relay: impl AsyncFnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Peer> {
    let d = dir.join("ssh");
    std::fs::create_dir_all(&d)?;
    for key in ["host_key", "user_key"] {
        let path = d.join(key);
        let path = path.to_str().context("path")?;
        run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", path],
        )
        .await?;
    }
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys"))?;
    if run("id", &["-u"]).await?.trim() == "0" {
        std::fs::create_dir_all("/run/sshd")?;
    }
    let port = free_port()?;
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
             PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             AllowTcpForwarding yes\nMaxSessions 10000\nMaxStartups 1000\n",
            host = d.join("host_key").display(),
            auth = d.join("authorized_keys").display(),
        ),
    )?;
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"]).arg(&config);
    let sshd = start("sshd", cmd, "Server listening on 127.0.0.1").await?;
    let hop = relay(local(port)).await?;
    let entry = local(free_port()?);
    let user = run("id", &["-un"]).await?.trim().to_owned();
    let mut cmd = Command::new("ssh");
    cmd.args(["-v", "-N", "-F", "/dev/null", "-i"])
        .arg(d.join("user_key"))
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ExitOnForwardFailure=yes"])
        .arg("-L")
        .arg(format!("{entry}:{target}"))
        .args(["-p", &hop.port().to_string()])
        .arg(format!("{user}@{}", hop.ip()));
    let client = start("ssh -L", cmd, "Local forwarding listening on 127.0.0.1").await?;
    Ok(Peer {
        name: "ssh -L",
        entry,
        ends: vec![client, sshd],
    })
}

/// A client-mode and a server-mode stunnel (TLS 1.3, a throwaway
/// certificate).
pub(crate) async fn stunnel(
    dir: &Path,
    target: SocketAddr,
    relay: impl AsyncFnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Peer> {
    let d = dir.join("stunnel");
    std::fs::create_dir_all(&d)?;
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
            "-keyout",
            key.to_str().context("path")?,
            "-out",
            cert.to_str().context("path")?,
        ],
    )
    .await?;
    let server_port = free_port()?;
    let server_conf = d.join("server.conf");
    std::fs::write(
        &server_conf,
        format!(
            "foreground = yes\npid =\ndebug = 5\n{NODELAY}[bench]\naccept = 127.0.0.1:{server_port}\n\
             connect = {target}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        ),
    )?;
    let server = start(
        "stunnel (server)",
        stunnel_cmd(&server_conf),
        "Configuration successful",
    )
    .await?;
    let hop = relay(local(server_port)).await?;
    let entry = local(free_port()?);
    let client_conf = d.join("client.conf");
    std::fs::write(
        &client_conf,
        format!(
            "foreground = yes\npid =\ndebug = 5\n{NODELAY}[bench]\nclient = yes\naccept = {entry}\nconnect = {hop}\n"
        ),
    )?;
    let client = start(
        "stunnel (client)",
        stunnel_cmd(&client_conf),
        "Configuration successful",
    )
    .await?;
    Ok(Peer {
        name: "stunnel",
        entry,
        ends: vec![client, server],
    })
}

/// Small writes go out at once on both of stunnel's sockets, as every
/// other path here does (Nagle would add delayed-ACK waits to each round
/// trip).
const NODELAY: &str = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";

fn stunnel_cmd(conf: &Path) -> Command {
    let mut cmd = Command::new("stunnel");
    cmd.arg(conf);
    cmd
}

/// Two socat relays in a row, forking per connection.
pub(crate) async fn socat(
    target: SocketAddr,
    relay: impl AsyncFnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Peer> {
    let exit_port = free_port()?;
    let mut cmd = Command::new("socat");
    cmd.args(["-d", "-d"])
        .arg(format!(
            "TCP-LISTEN:{exit_port},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=4096"
        ))
        .arg(format!("TCP:{target},nodelay"));
    let exit = start("socat (exit)", cmd, "listening on").await?;
    let hop = relay(local(exit_port)).await?;
    let entry = local(free_port()?);
    let mut cmd = Command::new("socat");
    cmd.args(["-d", "-d"])
        .arg(format!(
            "TCP-LISTEN:{},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=4096",
            entry.port()
        ))
        .arg(format!("TCP:{hop},nodelay"));
    let front = start("socat (entry)", cmd, "listening on").await?;
    Ok(Peer {
        name: "socat",
        entry,
        ends: vec![front, exit],
    })
}

/// rathole: the client (inside) dials the server (outside) over noise; the
/// server exposes the service.
pub(crate) async fn rathole(
    dir: &Path,
    target: SocketAddr,
    relay: impl AsyncFnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Peer> {
    let program = format!("{TOOLS}/rathole");
    let d = dir.join("rathole");
    std::fs::create_dir_all(&d)?;
    let keys = run(&program, &["--genkey"]).await?;
    // "Private Key:\n<b64>\n\nPublic Key:\n<b64>"
    let mut lines = keys.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut private = None;
    let mut public = None;
    while let Some(l) = lines.next() {
        if l.starts_with("Private Key") {
            private = lines.next().map(str::to_owned);
        } else if l.starts_with("Public Key") {
            public = lines.next().map(str::to_owned);
        }
    }
    let (private, public) = (
        private.context("rathole --genkey printed no private key")?,
        public.context("rathole --genkey printed no public key")?,
    );
    let control_port = free_port()?;
    let entry = local(free_port()?);
    let token = "bench-token-0123456789";
    let server_conf = d.join("server.toml");
    std::fs::write(
        &server_conf,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control_port}\"\n[server.transport]\ntype = \"noise\"\n\
             [server.transport.noise]\nlocal_private_key = \"{private}\"\n\
             [server.services.bench]\ntoken = \"{token}\"\nbind_addr = \"{entry}\"\nnodelay = true\n"
        ),
    )?;
    let mut cmd = Command::new(&program);
    cmd.args(["--server"])
        .arg(&server_conf)
        .env("NO_COLOR", "1");
    let server = start("rathole (server)", cmd, "Listening at").await?;
    let hop = relay(local(control_port)).await?;
    let client_conf = d.join("client.toml");
    std::fs::write(
        &client_conf,
        format!(
            "[client]\nremote_addr = \"{hop}\"\n[client.transport]\ntype = \"noise\"\n\
             [client.transport.noise]\nremote_public_key = \"{public}\"\n\
             [client.services.bench]\ntoken = \"{token}\"\nlocal_addr = \"{target}\"\nnodelay = true\n"
        ),
    )?;
    let mut cmd = Command::new(&program);
    cmd.args(["--client"])
        .arg(&client_conf)
        .env("NO_COLOR", "1");
    let client = start("rathole (client)", cmd, "Control channel established").await?;
    Ok(Peer {
        name: "rathole",
        entry,
        ends: vec![client, server],
    })
}

/// The floor relay (`tether-bench-floor`, built beside this program): the
/// least a tunnel over tonic does, one gRPC stream per connection over one
/// TLS 1.3 HTTP/2 connection. Not a peer: the cost of the transport that
/// Tether's design prescribes, without Tether's own layers.
pub(crate) async fn floor(
    dir: &Path,
    target: SocketAddr,
    relay: impl AsyncFnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<Peer> {
    let program = std::env::current_exe()?.with_file_name("tether-bench-floor");
    let d = dir.join("floor");
    std::fs::create_dir_all(&d)?;
    let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert, issued.cert.pem())?;
    std::fs::write(&key, issued.signing_key.serialize_pem())?;
    let far = local(free_port()?);
    let mut cmd = Command::new(&program);
    cmd.arg("far")
        .arg("--listen")
        .arg(far.to_string())
        .arg("--target")
        .arg(target.to_string())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key);
    let far_end = start("the floor relay (far)", cmd, "serving on").await?;
    let hop = relay(far).await?;
    let entry = local(free_port()?);
    let mut cmd = Command::new(&program);
    cmd.arg("near")
        .arg("--listen")
        .arg(entry.to_string())
        .arg("--far")
        .arg(hop.to_string())
        .arg("--ca")
        .arg(&cert);
    let near_end = start("the floor relay (near)", cmd, "listening on").await?;
    Ok(Peer {
        name: "tonic floor",
        entry,
        ends: vec![near_end, far_end],
    })
}
