//! `tetherctl` against a real control plane: tokens, agents, connections,
//! `dial` as a netcat, and the quickstart exactly as the README gives it.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;

use support::{Agent, ControlPlane, WAIT, ctl};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_agents_connections_and_dial() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;

    let (ok, out, err) = ctl(
        &cp,
        &["tokens", "create", "--pool", "p", "--ttl", "1h"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let join = out.trim().to_owned();
    assert!(join.starts_with("tether-join.v1."), "{out}");
    assert!(err.contains("it is not shown again"), "{err}");
    let token_id = join.split('.').nth(2).unwrap().to_owned();

    let (ok, out, err) = ctl(&cp, &["tokens", "list"], b"").await;
    assert!(
        ok && out.contains(&token_id) && out.contains("0/1"),
        "{out}{err}"
    );
    assert!(
        !out.contains(join.split('.').nth(3).unwrap()),
        "a listing must never show a secret"
    );

    let allow = echo.to_string();
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&join),
        &[&allow],
    )
    .await;
    let (ok, out, _) = ctl(&cp, &["agents", "list"], b"").await;
    assert!(
        ok && out.contains(&agent.id()) && out.contains("connected"),
        "{out}"
    );
    let (ok, out, _) = ctl(&cp, &["-o", "json", "agents", "get", &agent.id()], b"").await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "connected");

    let (ok, out, err) = ctl(
        &cp,
        &[
            "connections",
            "add",
            "echo",
            "--pool",
            "p",
            "--target",
            &allow,
            "--gateway",
            "127.0.0.1:0",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("127.0.0.1:"), "{out}");
    let (ok, out, err) = ctl(
        &cp,
        &["dial", "--connection", "echo"],
        b"hello through tetherctl",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "hello through tetherctl");
    let (ok, out, err) = ctl(&cp, &["dial", "--pool", "p", &allow], b"by pool").await;
    assert!(ok && out == "by pool", "{out}{err}");

    // A refusal is a readable error and a failing exit status.
    let (ok, _, err) = ctl(&cp, &["dial", "--pool", "p", "127.0.0.1:9"], b"").await;
    assert!(!ok && err.contains("egress_allow"), "{err}");

    let (ok, _, _) = ctl(&cp, &["connections", "remove", "echo"], b"").await;
    assert!(ok);
    let (ok, _, err) = ctl(&cp, &["connections", "remove", "echo"], b"").await;
    assert!(!ok && err.contains("no connection"), "{err}");
    let (ok, _, _) = ctl(&cp, &["tokens", "revoke", &token_id], b"").await;
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let target = echo.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tetherctl"))
        .args([
            "quickstart",
            "--target",
            &target,
            "--connection",
            "echo",
            "--dir",
        ])
        .arg(dir.path().join("qs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(found, "the quickstart never said it was ready:\n{printed}");
    // The gateway line: "  gateway        127.0.0.1:PORT -> target ..."
    let gateway = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("gateway"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    s.write_all(b"quickstart").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"quickstart");
    for hint in ["tetherctl --endpoint", "grpcurl -cacert", "agents list"] {
        assert!(
            printed.contains(hint),
            "the next steps must show {hint:?}:\n{printed}"
        );
    }

    use nix::{sys::signal, unistd::Pid};
    signal::kill(
        Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "Ctrl-C must stop the quickstart cleanly: {status}"
    );
    // Both children are gone: nothing answers on the gateway any more.
    assert!(tokio::net::TcpStream::connect(&gateway).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_bootstrap_key_is_the_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("tether-key.v1.{}.{}", "0123456789abcdef", "ab".repeat(32));
    let file = dir.path().join("bootstrap.key");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let cp = ControlPlane::start_on(
        &dir.path().join("cp"),
        "127.0.0.1:0",
        &["--bootstrap-api-key-file", file.to_str().unwrap()],
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_tetherctl"))
        .args(["--endpoint", &cp.endpoint(), "--ca-file"])
        .arg(cp.data_dir.join("ca.pem"))
        .args(["tokens", "list"])
        .env("TETHER_API_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cp.logs.text().contains(&"ab".repeat(32)),
        "the key leaked into the log"
    );
}
