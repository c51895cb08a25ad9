//! Day-2 diagnostics against the real binaries: health samples in
//! `agents get` and in metrics (checked by the real `promtool`), `agents
//! probe` with each step and each way it fails, `agents logs` with every
//! planted secret redacted, `agents config` with drift from the pool's
//! pins, and the errors for offline or unknown agents.

#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, process::Stdio};

use support::{Agent, ControlPlane, WAIT, ctl, eventually};
use tether::proto::{
    CreateConnectionRequest, GetAgentLogsRequest, GetAgentRequest, LogsCommand, ProbeAgentRequest,
    ProbeCommand,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

async fn health_ready(cp: &ControlPlane, id: &str, history: usize) -> tether::proto::Agent {
    let mut admin = cp.admin();
    eventually("a health sample and its history", || {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            let a = admin
                .get_agent(GetAgentRequest { agent_id: id })
                .await
                .ok()?
                .into_inner();
            (a.health.is_some() && a.history.len() >= history).then_some(a)
        }
    })
    .await;
    admin
        .get_agent(GetAgentRequest {
            agent_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// GET /metrics with an Accept header; (content type, body).
async fn scrape(ops: SocketAddr, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(ops).await.unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (ctype, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_samples_reach_agents_get_metrics_and_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_on(
        &dir.path().join("cp"),
        "127.0.0.1:0",
        &[
            "--health-history-interval",
            "100ms",
            "--health-history-samples",
            "5",
        ],
    )
    .await;
    let token = cp.token("p", 1).await;
    let agent = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &[]).await;
    let id = agent.id();

    let a = health_ready(&cp, &id, 3).await;
    let h = a.health.clone().unwrap();
    assert!(
        h.workspace_disk_total_bytes > 0 && h.workspace_disk_free_bytes > 0,
        "{h:?}"
    );
    assert!(h.workspace_inodes_total > 0, "{h:?}");
    assert!(
        h.host_memory_total_bytes >= h.host_memory_available_bytes && h.host_memory_total_bytes > 0
    );
    assert!(h.process_rss_bytes > 0);
    assert_eq!(h.config_hash, a.config_hash);
    assert_eq!(h.config_hash.len(), 64);
    assert!(h.certificate_not_after_unix_ms > a.connected_unix_ms);
    assert_eq!(h.problem, "");
    assert!(!h.draining);
    // Bounded history: never more than configured.
    assert!(a.history.len() <= 5, "{}", a.history.len());

    let (ok, out, err) = ctl(&cp, &["agents", "get", &id], b"").await;
    assert!(ok, "{err}");
    for field in [
        "workspace free",
        "cpu (agent / host)",
        "history",
        "problem",
        "drift",
    ] {
        assert!(out.contains(field), "no {field:?} in:\n{out}");
    }

    // Prometheus text for promtool and curl, OpenMetrics for Prometheus.
    let (ctype, text) = scrape(cp.ops, "text/plain").await;
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert!(
        text.contains("tether_pool_agents{org=\"default\",pool=\"p\",state=\"connected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tether_pool_agent_workspace_free_min_bytes{org=\"default\",pool=\"p\"}")
    );
    assert!(
        text.contains(
            "tether_pool_agent_certificate_expiry_min_seconds{org=\"default\",pool=\"p\"}"
        )
    );
    assert!(
        text.contains("# TYPE tether_agent_events_total counter"),
        "{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is missing: run scripts/install-test-deps.sh (Debian package prometheus)",
        );
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = tokio::time::timeout(WAIT, promtool.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (ctype, om) = scrape(cp.ops, "application/openmetrics-text; version=1.0.0").await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.trim_end().ends_with("# EOF"));
}

/// A listener whose accept queue is full: connects to it hang (Linux drops
/// the SYN), as behind a firewall that drops packets.
async fn blackhole() -> (SocketAddr, tokio::net::TcpListener, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fills the queue of one (never accepted).
    let filler = TcpStream::connect(addr).await.unwrap();
    (addr, listener, filler)
}

fn probe(agent_id: &str, host: &str, port: u16, tls: bool, timeout_ms: u32) -> ProbeAgentRequest {
    ProbeAgentRequest {
        agent_id: agent_id.to_owned(),
        probe: Some(ProbeCommand {
            host: host.to_owned(),
            port: u32::from(port),
            tls,
            tls_server_name: if tls {
                "localhost".into()
            } else {
                String::new()
            },
        }),
        timeout_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_each_step_and_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let echo = support::echo_server().await;
    let (hole, _listener, _filler) = blackhole().await;
    let token = cp.token("p", 1).await;
    let allow = [
        format!("localhost:{}", echo.port()),
        format!("127.0.0.1:{}", cp.grpc.port()),
        format!("127.0.0.1:{}", hole.port()),
        "no-such-host.invalid:*".to_owned(),
    ];
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let agent = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &allow).await;
    let id = agent.id();
    let mut admin = cp.admin();

    // Name → resolved → connected, each timed.
    let r = admin
        .probe_agent(probe(&id, "localhost", echo.port(), false, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.ok, "{r:?}");
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["egress", "dns", "tcp"]);
    assert!(r.steps[1].detail.contains("127.0.0.1"), "{r:?}");
    assert!(r.steps.iter().all(|s| s.duration_us > 0));

    // TLS: the peer certificate is reported (here: the control plane's).
    let (ok, out, err) = ctl(
        &cp,
        &[
            "agents",
            "probe",
            &id,
            &format!("127.0.0.1:{}", cp.grpc.port()),
            "--tls",
            "--sni",
            "localhost",
        ],
        b"",
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("tls") && out.contains("TLSv1_3"), "{out}");
    assert!(
        out.contains("certificate subject") && out.contains("issuer"),
        "{out}"
    );

    // Denied by the agent's own policy, which says how to allow it.
    let r = admin
        .probe_agent(probe(&id, "127.0.0.1", 1, false, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok);
    assert_eq!(r.steps.len(), 1, "{r:?}");
    assert_eq!(r.steps[0].name, "egress");
    assert!(
        r.steps[0].detail.contains("egress_allow"),
        "{}",
        r.steps[0].detail
    );
    let (ok, out, err) = ctl(&cp, &["agents", "probe", &id, "127.0.0.1:1"], b"").await;
    assert!(!ok);
    assert!(
        out.contains("FAILED") && err.contains("failed"),
        "{out}{err}"
    );

    // A name that does not resolve.
    let r = admin
        .probe_agent(probe(&id, "no-such-host.invalid", 80, false, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok);
    let dns = r.steps.iter().find(|s| s.name == "dns").unwrap();
    assert!(
        !dns.ok && dns.detail.contains("no-such-host.invalid"),
        "{dns:?}"
    );

    // No answer: the TCP step runs out of the probe's time and says so.
    let r = admin
        .probe_agent(probe(&id, "127.0.0.1", hole.port(), false, 2000))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok);
    let tcp = r.steps.iter().find(|s| s.name == "tcp").unwrap();
    assert!(
        !tcp.ok && tcp.detail.contains("no answer within"),
        "{tcp:?}"
    );

    // Bad input is refused before it reaches the agent.
    let err = admin
        .probe_agent(probe(&id, "", 80, false, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = admin
        .probe_agent(probe(&id, "db", 0, false, 0))
        .await
        .unwrap_err();
    assert!(err.message().contains("1-65535"), "{err:?}");
    let err = admin
        .probe_agent(probe("a-nobody", "db", 5432, false, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Nothing else was disturbed: the agent still probes.
    let r = admin
        .probe_agent(probe(&id, "localhost", echo.port(), false, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_back_with_every_planted_secret_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    let agent = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &[]).await;
    let id = agent.id();
    let mut admin = cp.admin();
    // Clients choose target names; the agent logs its refusals with them.
    // Each name carries a secret of one kind.
    let join = format!("tether-join.v1.0123456789abcdef.{}.zz", "a1".repeat(32));
    let key = format!("tether-key.v1.fedcba9876543210.{}", "c2".repeat(32));
    let planted = [
        ("password=planted-pw-1", "planted-pw-1"),
        ("authorization=PlantedAuth2abc", "PlantedAuth2abc"),
        ("postgres://app:planted-dsn-3@db", "planted-dsn-3"),
        (join.as_str(), "a1a1a1a1a1a1"),
        (key.as_str(), "c2c2c2c2c2c2"),
        ("token=planted-tok-4", "planted-tok-4"),
    ];
    for (n, (host, _)) in planted.iter().enumerate() {
        let conn = admin
            .create_connection(CreateConnectionRequest {
                name: format!("plant{n}"),
                pool: "p".into(),
                target_host: (*host).to_owned(),
                target_port: 5432,
                gateway_listen: "127.0.0.1:0".into(),
            })
            .await
            .unwrap()
            .into_inner();
        // Refused by the agent's (empty) egress policy: the gateway resets
        // the client, possibly before connect() even returns.
        if let Ok(mut s) = TcpStream::connect(&conn.gateway_address).await {
            let mut buf = [0u8; 1];
            let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        }
    }
    agent
        .logs
        .wait_for_nth("channel refused by the egress policy", planted.len())
        .await;

    let (ok, out, err) = ctl(
        &cp,
        &["-o", "json", "agents", "logs", &id, "--lines", "2000"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let lines: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = out.clone();
    let refusals = lines
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains("refused by the egress policy")
        })
        .count();
    assert_eq!(refusals, planted.len(), "{text}");
    for (_, secret) in planted {
        assert!(!text.contains(secret), "{secret} came back:\n{text}");
    }
    assert!(text.contains("[redacted]"));
    assert!(
        text.contains("0123456789abcdef"),
        "public token ids stay: {text}"
    );

    // --since in the future: nothing; --lines bounds the answer.
    let future = i64::MAX / 2;
    let r = admin
        .get_agent_logs(GetAgentLogsRequest {
            agent_id: id.clone(),
            logs: Some(LogsCommand {
                max_lines: 0,
                since_unix_ms: future,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.lines.is_empty());
    let r = admin
        .get_agent_logs(GetAgentLogsRequest {
            agent_id: id.clone(),
            logs: Some(LogsCommand {
                max_lines: 2,
                since_unix_ms: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.lines.len(), 2);
    assert!(r.truncated);
    let err = admin
        .get_agent_logs(GetAgentLogsRequest {
            agent_id: id.clone(),
            logs: Some(LogsCommand {
                max_lines: 5000,
                since_unix_ms: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // An offline agent: a clear answer, nothing else disturbed.
    agent.kill9().await;
    let err = eventually("the agent counted offline", || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move {
            admin
                .get_agent_logs(GetAgentLogsRequest {
                    agent_id: id,
                    logs: None,
                })
                .await
                .err()
                .filter(|e| e.code() == tonic::Code::FailedPrecondition)
        }
    })
    .await;
    assert!(err.message().contains("is offline"), "{err:?}");
    let (ok, _, err) = ctl(&cp, &["agents", "logs", &id], b"").await;
    assert!(
        !ok && err.contains("is offline") && err.contains("start it"),
        "{err}"
    );
    let (ok, _, err) = ctl(&cp, &["agents", "logs", "a-nobody"], b"").await;
    assert!(!ok && err.contains("no agent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_redacted_hashed_and_compared_with_the_pool_pin() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    // A proxy with a password in the environment; NO_PROXY keeps the
    // loopback control plane direct.
    let agent = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("a"),
        Some(&token),
        &["127.0.0.1:5432"],
        &["--label", "zone=a"],
        &[
            ("HTTPS_PROXY", "http://alice:proxy-pass-123@127.0.0.1:9"),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    agent.logs.wait_for("attached").await;
    let id = agent.id();

    let (ok, out, err) = ctl(&cp, &["agents", "config", &id], b"").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("https_proxy: http://alice:[redacted]@127.0.0.1:9"),
        "{out}"
    );
    assert!(!out.contains("proxy-pass-123"), "{out}");
    assert!(
        out.contains("- 127.0.0.1:5432") && out.contains("zone: a"),
        "{out}"
    );
    assert!(
        out.contains("join_token: '[redacted]'") || out.contains("join_token: \"[redacted]\""),
        "{out}"
    );
    assert!(out.contains("# drift         none"), "{out}");
    let a = health_ready(&cp, &id, 0).await;
    assert!(
        out.contains(&a.config_hash),
        "the hash shown is the one reported:\n{out}"
    );
    assert!(!a.drift);

    // Pin another version: the agent drifts, and says how.
    let (ok, _, err) = ctl(&cp, &["pools", "pin", "p", "--version", "9.9.9"], b"").await;
    assert!(ok, "{err}");
    let (ok, out, _) = ctl(&cp, &["agents", "list"], b"").await;
    assert!(ok && out.contains("drift"), "{out}");
    let (_, out, _) = ctl(&cp, &["agents", "config", &id], b"").await;
    assert!(
        out.contains("# DRIFT: version") && out.contains("9.9.9"),
        "{out}"
    );

    // Pin what this agent runs: in line again.
    let (ok, out, err) = ctl(&cp, &["pools", "pin", "p", "--from-agent", &id], b"").await;
    assert!(ok, "{err}");
    assert!(out.contains(&a.config_hash), "{out}");
    let (_, out, _) = ctl(&cp, &["-o", "json", "agents", "list"], b"").await;
    assert!(out.contains("\"drift\":\"-\""), "{out}");
    let (_, out, _) = ctl(&cp, &["pools", "list"], b"").await;
    assert!(
        out.contains(&a.config_hash) && out.contains(&a.version),
        "{out}"
    );

    // A hash that is not one is refused, and the pin stays.
    let (ok, _, err) = ctl(&cp, &["pools", "pin", "p", "--config-hash", "xyz"], b"").await;
    assert!(!ok && err.contains("not a SHA-256"), "{err}");
    let (_, out, _) = ctl(&cp, &["pools", "list"], b"").await;
    assert!(out.contains(&a.config_hash), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_workspace_refuses_new_channels_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let echo = support::echo_server().await;
    let allow = format!("127.0.0.1:{}", echo.port());
    let token = cp.token("p", 1).await;
    // No disk has this much free: the agent must refuse work.
    let agent = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("a"),
        Some(&token),
        &[&allow],
        &["--min-disk-free", "1000000TiB"],
        &[],
    );
    agent.logs.wait_for("attached").await;
    let id = agent.id();
    let gateway = cp.gateway("echo", "p", echo).await;
    // The first heartbeat carries the problem.
    let a = health_ready(&cp, &id, 0).await;
    assert_eq!(a.health.unwrap().problem_code, "disk_low");

    // The gateway resets the client (possibly before connect() returns).
    if let Ok(mut s) = TcpStream::connect(gateway).await {
        let _ = s.write_all(b"x").await;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a full agent took a channel");
    }
    cp.logs.wait_for("gateway client refused").await;
    let log = cp.logs.text();
    assert!(
        log.contains("takes no new work") && log.contains("min_disk_free"),
        "the refusal names the cause and the fix:\n{log}"
    );
    let (_, list, _) = ctl(&cp, &["agents", "list"], b"").await;
    assert!(list.contains("disk_low"), "{list}");
}
