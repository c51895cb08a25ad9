//! The agent behind hostile networks, with real proxies started by the
//! tests on 127.0.0.1: tinyproxy (HTTP CONNECT with basic auth) and
//! mitmproxy (TLS interception). The agent's only outbound connection is to
//! the proxy; pinning detects interception and says how to allow it; a
//! trusted inspection CA with pinning off works.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashSet, net::SocketAddr, path::Path, process::Stdio};

use support::{Agent, ControlPlane, Logs};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

/// Starts a program and returns once a line of its output contains
/// `ready`; its output keeps flowing into the returned logs.
async fn start_tool(program: &str, args: &[&str], ready: &str) -> (Child, Logs) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}; install it with scripts/install-test-deps.sh (as root)")
    });
    let logs = Logs::default();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        // Ends with the tool's output.
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.push_line(line);
            }
        });
    }
    logs.wait_for_text(ready).await;
    (child, logs)
}

/// tinyproxy on a free port, requiring basic auth alice/s3cret.
async fn tinyproxy(dir: &Path) -> (Child, u16) {
    let port = support::free_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nBasicAuth alice s3cret\nLogLevel Info\nMaxClients 50\n"
        ),
    )
    .unwrap();
    let (child, _) = start_tool(
        "tinyproxy",
        &["-d", "-c", conf.to_str().unwrap()],
        "listening on fd",
    )
    .await;
    (child, port)
}

/// mitmdump intercepting TLS on a free port; `client_cert` is the PEM
/// (certificate and key) it presents upstream, as an inspecting proxy
/// configured for the agent would.
async fn mitmproxy(confdir: &Path, client_cert: Option<&Path>) -> (Child, u16) {
    let port = support::free_port();
    let port_s = port.to_string();
    let confdir_opt = format!("confdir={}", confdir.display());
    let mut args = vec![
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        &port_s,
        "--set",
        &confdir_opt,
        // The control plane's certificate is signed by its own CA.
        "--set",
        "ssl_insecure=true",
        // Stream request and response bodies: the tunnel is one endless call.
        "--set",
        "stream_large_bodies=1",
    ];
    let client_opt;
    if let Some(c) = client_cert {
        client_opt = format!("client_certs={}", c.display());
        args.extend(["--set", &client_opt]);
    }
    let (child, _) = start_tool("mitmdump", &args, "proxy listening at").await;
    (child, port)
}

/// Remote ports of the process's established TCP connections (from /proc).
fn remote_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&"01") || !inodes.contains(*cols.get(9)?) {
                return None;
            }
            let port = cols.get(2)?.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

async fn round_trip(gateway: SocketAddr, msg: &[u8]) {
    let mut s = TcpStream::connect(gateway).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(support::WAIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reaches_the_control_plane_only_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let (_proxy, proxy_port) = tinyproxy(dir.path()).await;
    let allow = echo.to_string();

    // Wrong proxy password: the agent says where the credentials go.
    let bad = format!("http://alice:wrong@127.0.0.1:{proxy_port}");
    let token = cp.token("p", 2).await;
    let refused = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("bad"),
        Some(&token),
        &[&allow],
        &[],
        &[("HTTPS_PROXY", bad.as_str()), ("NO_PROXY", "")],
    );
    refused
        .logs
        .wait_for_text("requires authentication (HTTP 401)")
        .await;
    assert!(
        refused
            .logs
            .text()
            .contains("HTTPS_PROXY=http://user:password@"),
        "the refusal must say where the credentials go"
    );
    assert!(
        !refused.logs.text().contains("wrong"),
        "the proxy password leaked into the log"
    );
    drop(refused);

    let good = format!("http://alice:s3cret@127.0.0.1:{proxy_port}");
    let agent = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&allow],
        &[],
        &[("HTTPS_PROXY", good.as_str()), ("NO_PROXY", "")],
    );
    agent.logs.wait_for("attached").await;
    let gw = cp.gateway("echo", "p", echo).await;
    round_trip(gw, b"through the proxy").await;

    let peers = remote_ports(agent.pid());
    assert!(
        peers.contains(&proxy_port),
        "the agent must talk to the proxy: {peers:?}"
    );
    assert!(
        !peers.contains(&cp.grpc.port()),
        "the agent must not reach the control plane directly: {peers:?}"
    );
    assert!(
        !agent.logs.text().contains("s3cret"),
        "the proxy password leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_inspection_is_refused_when_pinned_and_passes_when_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let confdir = dir.path().join("mitm");
    let (mitm, port) = mitmproxy(&confdir, None).await;
    let proxy = format!("http://127.0.0.1:{port}");
    let env = [("HTTPS_PROXY", proxy.as_str()), ("NO_PROXY", "")];
    let allow = echo.to_string();
    let token = cp.token("p", 2).await;

    // Pinned (the default): the agent refuses, says why, and stops.
    let mut pinned = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("pinned"),
        Some(&token),
        &[&allow],
        &[],
        &env,
    );
    let status = tokio::time::timeout(support::WAIT, pinned.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let log = pinned.logs.text();
    assert!(
        log.contains("does not contain the CA pinned in the join token"),
        "{log}"
    );
    assert!(
        log.contains("inspects TLS") && log.contains("--pin-ca false"),
        "{log}"
    );

    // Trusting the inspection CA with pinning off: enrollment goes through.
    let mitm_ca = confdir.join("mitmproxy-ca-cert.pem");
    let ca_arg = mitm_ca.to_str().unwrap().to_owned();
    let args = ["--pin-ca", "false", "--ca-file", ca_arg.as_str()];
    let state = dir.path().join("trusting");
    let enrolling = Agent::spawn_with(&cp.endpoint(), &state, Some(&token), &[&allow], &args, &env);
    enrolling.logs.wait_for("enrolled").await;
    // The session needs the agent's client certificate, which an inspecting
    // proxy must be given to present: configure it, as an operator would.
    enrolling.kill9().await;
    drop(mitm);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let mut pem = std::fs::read(state.join(info["cert_file"].as_str().unwrap())).unwrap();
    pem.extend(std::fs::read(state.join(info["key_file"].as_str().unwrap())).unwrap());
    let client_pem = dir.path().join("agent-client.pem");
    std::fs::write(&client_pem, pem).unwrap();
    let (_mitm, port) = mitmproxy(&confdir, Some(&client_pem)).await;
    let proxy = format!("http://127.0.0.1:{port}");
    let env = [("HTTPS_PROXY", proxy.as_str()), ("NO_PROXY", "")];
    let agent = Agent::spawn_with(&cp.endpoint(), &state, None, &[&allow], &args, &env);
    agent.logs.wait_for("attached").await;
    let gw = cp.gateway("echo", "p", echo).await;
    round_trip(gw, b"through TLS inspection").await;
}
