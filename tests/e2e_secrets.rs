//! Invariant 6: secrets never appear in logs, errors, metrics, the audit
//! log or the store in clear. A full run — enrollment, keys of every role,
//! channels, a refused join token, a bad key, a revocation — and then every
//! byte the system produced is searched for every secret it was given.

#![allow(clippy::unwrap_used)]

mod support;

use support::{Agent, ControlPlane};
use tether::{
    dial::{Destination, Dialer},
    proto::{ListAgentsRequest, ListAuditEventsRequest, RevokeAgentRequest, Role},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The parts of a PEM private key worth searching for: its base64 lines.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_anywhere_in_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let mut secrets: Vec<(String, String)> = Vec::new();
    secrets.push((
        "bootstrap admin key".into(),
        cp.api_key().rsplit('.').next().unwrap().to_owned(),
    ));

    let join = cp.token("p", 1).await;
    secrets.push((
        "join token secret".into(),
        join.split('.').nth(3).unwrap().to_owned(),
    ));
    let allow = echo.to_string();
    let state = dir.path().join("agent");
    let agent = Agent::start(&cp.endpoint(), &state, Some(&join), &[&allow]).await;
    for (name, role) in [("viewer", Role::Viewer), ("operator", Role::Operator)] {
        let key = cp.key(role, "", &[], &[]).await;
        secrets.push((
            format!("{name} key"),
            key.rsplit('.').next().unwrap().to_owned(),
        ));
        cp.admin_with(&key)
            .list_agents(ListAgentsRequest::default())
            .await
            .unwrap();
    }
    let dialer = cp.key(Role::Dialer, "", &[], &["p"]).await;
    secrets.push((
        "dialer key".into(),
        dialer.rsplit('.').next().unwrap().to_owned(),
    ));

    // Traffic, a refused token (wrong secret, right shape), a bad key.
    let d = Dialer::connect(&cp.endpoint(), &cp.credentials_with(&dialer)).unwrap();
    let mut s = d
        .dial(Destination::pool("p", "127.0.0.1", echo.port()))
        .await
        .unwrap();
    s.write_all(b"payload").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    let parts: Vec<&str> = join.split('.').collect();
    let wrong_secret = "f".repeat(64);
    secrets.push(("refused join token secret".into(), wrong_secret.clone()));
    let wrong = format!("tether-join.v1.{}.{}.{}", parts[2], wrong_secret, parts[4]);
    let mut refused = Agent::spawn(
        &cp.endpoint(),
        &dir.path().join("refused"),
        Some(&wrong),
        &[],
    );
    tokio::time::timeout(support::WAIT, refused.child.wait())
        .await
        .unwrap()
        .unwrap();
    let bad_key = format!("tether-key.v1.{}.{}", "0".repeat(16), "e".repeat(64));
    secrets.push(("rejected API key".into(), "e".repeat(64)));
    assert!(
        cp.admin_with(&bad_key)
            .list_agents(ListAgentsRequest::default())
            .await
            .is_err()
    );
    cp.admin()
        .revoke_agent(RevokeAgentRequest {
            agent_id: agent.id(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    agent
        .logs
        .wait_for_text("revoked: re-enroll with a new token")
        .await;

    // Private keys: the agent's and the CA's.
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let agent_key =
        std::fs::read_to_string(state.join(info["key_file"].as_str().unwrap())).unwrap();
    let ca_key = std::fs::read_to_string(cp.data_dir.join("ca.key")).unwrap();
    for line in pem_lines(&agent_key) {
        secrets.push(("agent private key".into(), line));
    }
    for line in pem_lines(&ca_key) {
        secrets.push(("CA private key".into(), line));
    }

    // Everything produced: logs of all processes, metrics, the audit log,
    // and the store (SQLite's database and write-ahead log, or a dump of
    // the PostgreSQL schema).
    let audit = format!(
        "{:?}",
        cp.admin()
            .list_audit_events(ListAuditEventsRequest {
                limit: 1000,
                before_unix_ms: 0
            })
            .await
            .unwrap()
            .into_inner()
    );
    let metrics = cp.metrics().await;
    let store = support::store_contents(&cp.data_dir).await;
    let places = [
        ("control plane log", cp.logs.text()),
        ("agent log", agent.logs.text()),
        ("refused agent log", refused.logs.text()),
        ("metrics", metrics),
        ("audit log", audit),
        ("store", store),
    ];
    for (where_, text) in &places {
        assert!(
            !text.is_empty(),
            "{where_} is empty: the sweep would prove nothing"
        );
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} appears in the {where_}"
            );
        }
    }
}
