//! Day-2 operations against the real binaries: drain (waits for running
//! channels, survives the agent's restart) and undrain, pool recycling
//! under a supervisor that restarts agents on exit code 75 (and stopping
//! at the first agent that does not come back), events listed and
//! followed, and alerts delivered to a real HTTP receiver (Python's
//! http.server) with retries and signatures, or failing clearly when the
//! receiver is down.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use nix::{sys::signal, unistd::Pid};
use support::{Agent, ControlPlane, WAIT, ctl, eventually};
use tether::proto::{AgentState, GetAgentRequest, ListEventsRequest};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::Command,
    task::JoinHandle,
};

async fn agent_of(cp: &ControlPlane, id: &str) -> tether::proto::Agent {
    cp.admin()
        .get_agent(GetAgentRequest {
            agent_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Connects through the gateway and echoes `msg`; false if the gateway
/// closed without an answer (no agent would take the channel).
async fn echoes(gateway: SocketAddr, msg: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(gateway).await else {
        return false;
    };
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    let read = tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .unwrap();
    read.is_ok() && buf == msg
}

async fn event_kinds(cp: &ControlPlane, agent: &str) -> Vec<String> {
    cp.admin()
        .list_events(ListEventsRequest {
            after_id: 0,
            limit: 1000,
            agent_id: agent.to_owned(),
            newest: false,
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn wait_event(cp: &ControlPlane, agent: &str, kind: &str) {
    eventually(&format!("a {kind} event of {agent}"), || async {
        event_kinds(cp, agent)
            .await
            .iter()
            .any(|k| k == kind)
            .then_some(())
    })
    .await;
}

/// `tetherctl pools recycle r` with a reattach wait.
async fn recycle(cp: &ControlPlane, reattach_wait: &str) -> (bool, String, String) {
    let args = [
        "pools",
        "recycle",
        "r",
        "--drain-wait",
        "5s",
        "--reattach-wait",
        reattach_wait,
    ];
    ctl(cp, &args, b"").await
}

async fn wait_state(cp: &ControlPlane, id: &str, state: AgentState) {
    eventually(&format!("agent {id} {state:?}"), || async {
        (agent_of(cp, id).await.state == state as i32).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_channels_survives_a_restart_and_undrains() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let echo = support::echo_server().await;
    let allow = format!("127.0.0.1:{}", echo.port());
    let token = cp.token("p", 1).await;
    let state_dir = dir.path().join("a");
    let agent = Agent::start(&cp.endpoint(), &state_dir, Some(&token), &[&allow]).await;
    let id = agent.id();
    let gateway = cp.gateway("echo", "p", echo).await;

    // A channel in flight.
    let mut running = TcpStream::connect(gateway).await.unwrap();
    running.write_all(b"a").await.unwrap();
    let mut one = [0u8; 1];
    running.read_exact(&mut one).await.unwrap();

    // The drain stops new channels at once, but reports the running one.
    let (ok, out, err) = ctl(&cp, &["agents", "drain", &id, "--wait", "300ms"], b"").await;
    assert!(!ok, "{out}");
    assert!(err.contains("1 channels and 0 jobs still run"), "{err}");
    assert!(out.contains("draining"), "{out}");
    assert!(
        !echoes(gateway, b"new").await,
        "a drained agent took a new channel"
    );
    running.write_all(b"b").await.unwrap();
    running.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"b", "the running channel goes on");
    drop(running);
    let (ok, _, err) = ctl(&cp, &["agents", "drain", &id, "--wait", "10s"], b"").await;
    assert!(ok, "{err}");
    assert!(err.contains("is drained"), "{err}");

    // A restart does not undo the drain: the control plane tells the agent.
    agent.kill9().await;
    let agent = Agent::start(&cp.endpoint(), &state_dir, None, &[&allow]).await;
    wait_state(&cp, &id, AgentState::Draining).await;
    eventually("the restarted agent reports itself drained", || async {
        agent_of(&cp, &id)
            .await
            .health
            .filter(|h| h.draining)
            .map(|_| ())
    })
    .await;
    assert!(!echoes(gateway, b"new").await);

    let (ok, out, err) = ctl(&cp, &["agents", "undrain", &id], b"").await;
    assert!(ok, "{err}");
    assert!(out.contains("connected"), "{out}");
    assert!(echoes(gateway, b"again").await);
    wait_event(&cp, &id, "draining").await;
    wait_event(&cp, &id, "undrained").await;
    // The audit log has both.
    let (_, audit, _) = ctl(&cp, &["audit"], b"").await;
    assert!(
        audit.contains("DrainAgent") && audit.contains("UndrainAgent"),
        "{audit}"
    );

    // Bad input: a clear answer, nothing disturbed.
    let (ok, _, err) = ctl(&cp, &["agents", "drain", "a-nobody"], b"").await;
    assert!(!ok && err.contains("no agent"), "{err}");
    assert!(echoes(gateway, b"still").await);
    drop(agent);
}

/// Runs the agent binary like systemd's `Restart=on-failure` would, for
/// exit code 75 only, at most three times; records each exit code.
fn supervise(
    endpoint: String,
    state_dir: PathBuf,
    token: String,
    exits: Arc<Mutex<Vec<i32>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..3 {
            let mut agent = Agent::spawn(&endpoint, &state_dir, Some(&token), &[]);
            // The agent runs until recycled; the task is aborted at the end
            // of the test, which kills the child (kill_on_drop).
            let status = agent.child.wait().await.unwrap();
            let code = status.code().unwrap_or(-1);
            exits.lock().unwrap().push(code);
            if code != 75 {
                return;
            }
        }
    })
}

async fn session_of(cp: &ControlPlane, id: &str) -> String {
    eventually("a live session", || async {
        let a = agent_of(cp, id).await;
        (a.state == AgentState::Connected as i32 && a.health.is_some()).then_some(a.session_id)
    })
    .await
}

fn agent_id_in(state_dir: &Path) -> String {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("agent.json")).unwrap()).unwrap();
    info["agent_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_restarts_agents_one_at_a_time_and_stops_at_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("r", 3).await;
    let mut supervisors = Vec::new();
    let mut exits = Vec::new();
    let mut dirs = Vec::new();
    for n in 0..2 {
        let state_dir = dir.path().join(format!("a{n}"));
        let e = Arc::new(Mutex::new(Vec::new()));
        supervisors.push(supervise(
            cp.endpoint(),
            state_dir.clone(),
            token.clone(),
            e.clone(),
        ));
        exits.push(e);
        dirs.push(state_dir);
    }
    let ids: Vec<String> = futures_util::future::join_all(dirs.iter().map(|d| async {
        eventually("enrolled", || async {
            d.join("agent.json").exists().then(|| agent_id_in(d))
        })
        .await
    }))
    .await;
    let mut before = Vec::new();
    for id in &ids {
        before.push(session_of(&cp, id).await);
    }

    let (ok, out, err) = recycle(&cp, "30s").await;
    assert!(ok, "{out}{err}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert_eq!(out.matches(" ok ").count(), 2, "{out}");
    for (n, id) in ids.iter().enumerate() {
        let after = session_of(&cp, id).await;
        assert_ne!(after, before[n], "agent {id} has a new session");
        assert_eq!(
            *exits[n].lock().unwrap(),
            [75],
            "agent {id} exited once, for a restart"
        );
        // Events trail the recycle by up to one watcher scan.
        wait_event(&cp, id, "draining").await;
        wait_event(&cp, id, "undrained").await;
    }

    // The first agent (by id) now runs without a supervisor: it will not
    // come back, and the second must not be touched.
    let mut order: Vec<usize> = (0..2).collect();
    order.sort_by_key(|n| ids[*n].clone());
    let (first, second) = (order[0], order[1]);
    supervisors[first].abort();
    let _ = (&mut supervisors[first]).await;
    let unsupervised = Agent::start(&cp.endpoint(), &dirs[first], None, &[]).await;
    let second_session = session_of(&cp, &ids[second]).await;
    session_of(&cp, &ids[first]).await;
    let (ok, out, _) = recycle(&cp, "2s").await;
    assert!(!ok);
    assert!(
        out.contains("FAILED") && out.contains("did not come back healthy"),
        "{out}"
    );
    assert!(
        !out.contains(&ids[second]),
        "recycling went on after a failure:\n{out}"
    );
    assert_eq!(session_of(&cp, &ids[second]).await, second_session);
    assert_eq!(
        agent_of(&cp, &ids[first]).await.state,
        AgentState::Offline as i32
    );
    drop(unsupervised);
    for s in supervisors {
        s.abort();
    }
}

/// The Python receiver: (port, requests file, stdin holder that stops it).
async fn receiver(dir: &Path, fail_first: u32) -> (u16, PathBuf, tokio::process::Child) {
    let port_file = dir.join("port");
    let out = dir.join("requests.jsonl");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(&port_file)
        .arg(&out)
        .arg(fail_first.to_string())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the webhook receiver");
    let port = eventually("the receiver listens", || async {
        std::fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse::<u16>()
            .ok()
    })
    .await;
    (port, out, child)
}

fn requests(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn signal_agent(agent: &Agent, sig: signal::Signal) {
    signal::kill(Pid::from_raw(i32::try_from(agent.pid()).unwrap()), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_followed_and_alerts_reach_a_real_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (port, requests_file, _receiver) = receiver(dir.path(), 2).await;
    let secret = "whsec-0123456789abcdef";
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let url = format!("http://127.0.0.1:{port}/hooks/tether?team=data");
    let cp = ControlPlane::start_on(
        &dir.path().join("cp"),
        "127.0.0.1:0",
        &[
            "--alert-webhook-url",
            &url,
            "--alert-webhook-secret-file",
            secret_file.to_str().unwrap(),
            // Certificates that live 1 h are "expiring" under a 2 h threshold.
            "--agent-cert-lifetime",
            "1h",
            "--alert-certificate-expiry",
            "2h",
        ],
    )
    .await;

    // `tetherctl events --follow` from before anything happens.
    let mut follow = Command::new(support::binary("tetherctl"))
        .args(["--endpoint", &cp.endpoint(), "--data-dir"])
        .arg(&cp.data_dir)
        .args(["-o", "json", "events", "--follow"])
        .env_remove("TETHER_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let followed = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = followed.clone();
    let stdout = follow.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push(serde_json::from_str(&l).unwrap());
        }
    });

    let token = cp.token("w", 2).await;
    let agent = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &[]).await;
    let id = agent.id();
    // Disk "full": a threshold no disk meets.
    let full = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("full"),
        Some(&token),
        &[],
        &["--min-disk-free", "1000000TiB"],
        &[],
    );
    full.logs.wait_for("attached").await;
    let full_id = full.id();

    // Stale (paused), recovered, then offline (gone).
    wait_event(&cp, &id, "connected").await;
    signal_agent(&agent, signal::Signal::SIGSTOP);
    wait_state(&cp, &id, AgentState::Stale).await;
    // Paused until the watcher has reported it (its scan may lag the state).
    wait_event(&cp, &id, "stale").await;
    signal_agent(&agent, signal::Signal::SIGCONT);
    wait_event(&cp, &id, "recovered").await;
    agent.kill9().await;
    wait_event(&cp, &id, "offline").await;

    let kinds = event_kinds(&cp, &id).await;
    for k in [
        "connected",
        "certificate_expiring",
        "stale",
        "recovered",
        "offline",
    ] {
        assert!(kinds.contains(&k.to_owned()), "no {k} in {kinds:?}");
    }
    let full_kinds = event_kinds(&cp, &full_id).await;
    assert!(
        full_kinds.contains(&"disk_low".to_owned()),
        "{full_kinds:?}"
    );
    let (_, list, _) = ctl(&cp, &["agents", "list"], b"").await;
    assert!(list.contains("disk_low"), "{list}");

    // Every alert reached the receiver, signed; the first two attempts got
    // 500 and were retried.
    let want = ["certificate_expiring", "stale", "offline", "disk_low"];
    let delivered = eventually("alerts delivered", || async {
        let reqs = requests(&requests_file);
        let ok: Vec<serde_json::Value> = reqs
            .iter()
            .filter(|r| r["status"] == 200)
            .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
            .collect();
        want.iter()
            .all(|k| ok.iter().any(|b: &serde_json::Value| b["kind"] == *k))
            .then_some(reqs)
    })
    .await;
    assert_eq!(delivered[0]["status"], 500);
    assert_eq!(delivered[1]["status"], 500);
    assert_eq!(
        delivered[0]["headers"]["x-tether-event-id"], delivered[2]["headers"]["x-tether-event-id"],
        "the failed alert was retried"
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    for r in &delivered {
        assert_eq!(r["path"], "/hooks/tether?team=data");
        let body = r["body"].as_str().unwrap();
        let sig = r["headers"]["x-tether-signature"].as_str().unwrap();
        let tag = hex::decode(sig.strip_prefix("sha256=").unwrap()).unwrap();
        ring::hmac::verify(&key, body.as_bytes(), &tag).expect("a valid signature");
        let b: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(b["alert"], true, "only alerts go to the webhook: {b}");
        assert!(!b["detail"].as_str().unwrap().is_empty());
    }

    // The follower saw the same events as they happened.
    let seen = eventually("followed", || async {
        let f = followed.lock().unwrap().clone();
        f.iter().any(|e| e["kind"] == "offline").then_some(f)
    })
    .await;
    for k in ["connected", "stale", "recovered", "offline", "disk_low"] {
        assert!(
            seen.iter().any(|e| e["kind"] == k),
            "followed no {k}: {seen:?}"
        );
    }
    let ids: Vec<u64> = seen.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {ids:?}"
    );
    drop(full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_is_down_is_retried_and_disturbs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cp = ControlPlane::start_on(
        &dir.path().join("cp"),
        "127.0.0.1:0",
        &[
            "--alert-webhook-url",
            &format!("http://127.0.0.1:{port}/hook"),
            "--agent-cert-lifetime",
            "1h",
            "--alert-certificate-expiry",
            "2h",
        ],
    )
    .await;
    let token = cp.token("w", 1).await;
    let agent = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &[]).await;
    cp.logs
        .wait_for_text("alert webhook delivery failed; retrying")
        .await;
    assert!(
        cp.logs
            .text()
            .contains("cannot connect to http://127.0.0.1"),
        "the reason is named"
    );
    assert!(
        cp.metric("tether_alert_webhook_deliveries_total{result=\"retried\"}")
            .await
            >= 1.0
    );
    // Everything else works: the alert is in the event log, agents list.
    assert!(
        event_kinds(&cp, &agent.id())
            .await
            .contains(&"certificate_expiring".to_owned())
    );
    let (ok, out, _) = ctl(&cp, &["agents", "list"], b"").await;
    assert!(ok && out.contains(&agent.id()), "{out}");
}
