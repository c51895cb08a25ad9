//! Processes coming and going: an agent killed with SIGKILL and restarted,
//! a control plane restarted under a running agent, and the agent's
//! promise never to listen (invariant 1), checked from /proc.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashSet, net::SocketAddr};

use support::{Agent, ControlPlane};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends `msg` through `gateway` to an echo target and expects it back.
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

/// The gateway address of a connection (it changes when the control plane
/// restarts with 127.0.0.1:0).
async fn gateway_of(cp: &ControlPlane, name: &str) -> SocketAddr {
    let list = cp
        .admin()
        .list_connections(tether::proto::ListConnectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    list.connections
        .into_iter()
        .find(|c| c.name == name)
        .unwrap()
        .gateway_address
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_restarts_from_its_state_and_reattaches() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let state = dir.path().join("agent");
    let agent = Agent::start(&cp.endpoint(), &state, Some(&token), &[&allow]).await;
    let id = agent.id();
    let gw = cp.gateway("echo", "p", echo).await;
    round_trip(gw, b"before").await;

    agent.kill9().await;
    // No token this time: the single-use token is spent, the identity in
    // the state directory is all the agent needs.
    let agent = Agent::start(&cp.endpoint(), &state, None, &[&allow]).await;
    assert_eq!(agent.id(), id, "the restarted agent must keep its identity");
    round_trip(gw, b"after a kill -9").await;
    // The newest session won; the control plane saw two attaches.
    cp.logs.wait_for_nth("agent attached", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_comes_back_by_itself_after_a_control_plane_restart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp_dir = dir.path().join("cp");
    let cp = ControlPlane::start(&cp_dir).await;
    let listen = cp.grpc.to_string();
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&allow],
    )
    .await;
    cp.gateway("echo", "p", echo).await;

    let status = cp.stop().await;
    assert!(
        status.success(),
        "the control plane must exit cleanly on SIGTERM: {status}"
    );
    // Same data directory and port: the same CA, keys, connections.
    let cp = ControlPlane::start_on(&cp_dir, &listen, &[]).await;
    agent.logs.wait_for_nth("attached", 2).await;
    round_trip(gateway_of(&cp, "echo").await, b"after the restart").await;
}

/// Socket inodes the process holds open.
fn socket_inodes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect()
}

/// Inodes of TCP sockets in a state, from /proc/net/tcp and tcp6 (state
/// "0A" is LISTEN, "01" ESTABLISHED).
fn tcp_inodes(state: &str) -> HashSet<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    (cols.get(3) == Some(&state)).then(|| cols.get(9).map(|s| (*s).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A control plane, an agent and a channel through it to an echo server
/// that has carried one byte each way.
async fn agent_with_an_open_channel(dir: &std::path::Path) -> (ControlPlane, Agent, TcpStream) {
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.join("cp")).await;
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let agent = Agent::start(&cp.endpoint(), &dir.join("agent"), Some(&token), &[&allow]).await;
    let gw = cp.gateway("echo", "p", echo).await;
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    (cp, agent, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_has_no_listening_socket() {
    let dir = tempfile::tempdir().unwrap();
    // While a channel is open, too.
    let (_cp, agent, _channel) = agent_with_an_open_channel(dir.path()).await;

    let mine = socket_inodes(agent.pid());
    let listening = tcp_inodes("0A");
    let established = tcp_inodes("01");
    assert!(
        mine.intersection(&established).count() >= 2,
        "the check must see the agent's outbound session and its channel"
    );
    let bad: Vec<_> = mine.intersection(&listening).collect();
    assert!(
        bad.is_empty(),
        "the agent listens on a socket: inodes {bad:?}"
    );
}

/// The environment a running process started with.
fn environ_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Both binaries run with glibc's malloc tuned (see `tether::malloc`):
/// they executed themselves again with GLIBC_TUNABLES set, under the
/// process id they were started with, and serve as usual.
#[tokio::test]
async fn both_binaries_run_with_tuned_malloc_under_their_own_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, agent, _channel) = agent_with_an_open_channel(dir.path()).await;

    let tuned = format!("GLIBC_TUNABLES={}", tether::malloc::TUNABLES);
    for (name, pid) in [
        ("control plane", cp.child.id().unwrap()),
        ("agent", agent.pid()),
    ] {
        assert!(
            environ_of(pid).contains(&tuned),
            "the {name} (pid {pid}) runs without {tuned}"
        );
    }
}
