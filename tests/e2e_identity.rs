//! Agent identity over its life: revocation cuts a live session within a
//! second and sticks across a control-plane restart (invariant 5);
//! certificates renew over the live session without dropping channels, and
//! an old certificate stops working when it expires; certificates from
//! another CA, expired or not yet valid, or of an unknown agent are refused
//! clearly while other sessions keep working (invariant 8).

#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, path::Path, time::Duration};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
};
use support::{Agent, ControlPlane};
use tether::{
    client::{self, ControlPlaneAddr},
    proto::{
        AgentFrame, AgentState, GetAgentRequest, Hello, ProtocolVersion, RenewRequest,
        RevokeAgentRequest, agent_frame, enrollment_client::EnrollmentClient,
        tunnel_client::TunnelClient,
    },
    tls::{self, Identity, Trust},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_stream::wrappers::ReceiverStream;

async fn held(gateway: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gateway).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    s
}

async fn echo_through(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(support::WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// The current certificate and key of an agent's state directory.
fn identity_files(state: &Path) -> (Vec<u8>, Vec<u8>) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    (
        std::fs::read(state.join(info["cert_file"].as_str().unwrap())).unwrap(),
        std::fs::read(state.join(info["key_file"].as_str().unwrap())).unwrap(),
    )
}

/// Attaches with a given certificate and key; returns the first answer.
async fn attach_with(
    cp: &ControlPlane,
    agent_id: &str,
    cert: &[u8],
    key: &[u8],
) -> Result<(), String> {
    let identity = Identity::from_pem(cert, key).unwrap();
    let config = tls::client_config(&Trust::ca_pem(&cp.ca_pem()).unwrap(), Some(identity)).unwrap();
    let channel =
        client::channel(&ControlPlaneAddr::parse(&cp.endpoint()).unwrap(), config).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentFrame {
        kind: Some(agent_frame::Kind::Hello(Hello {
            protocol_version: ProtocolVersion::ProtocolVersion1 as i32,
            agent_id: agent_id.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let result = TunnelClient::new(channel)
        .attach(ReceiverStream::new(rx))
        .await;
    match result {
        Ok(mut s) => match s.get_mut().message().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("the stream ended".into()),
            Err(st) => Err(client::describe_error(&st)),
        },
        Err(st) => Err(format!("{:?}: {}", st.code(), client::describe_error(&st))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_the_session_at_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp_dir = dir.path().join("cp");
    let cp = ControlPlane::start(&cp_dir).await;
    let listen = cp.grpc.to_string();
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let state = dir.path().join("agent");
    let agent = Agent::start(&cp.endpoint(), &state, Some(&token), &[&allow]).await;
    let id = agent.id();
    let gw = cp.gateway("echo", "p", echo).await;
    let mut client = held(gw).await;

    cp.admin()
        .revoke_agent(RevokeAgentRequest {
            agent_id: id.clone(),
            reason: "laptop stolen".into(),
        })
        .await
        .unwrap();
    // The revoked agent's channel is cut within a second (the issue's
    // promise: this is the behaviour under test, not a synchronisation).
    let mut buf = [0u8; 16];
    let cut = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
        .await
        .expect("the revoked agent's channel was not cut within 1 s");
    assert!(
        matches!(cut, Ok(0) | Err(_)),
        "the channel must end, not carry data"
    );
    agent
        .logs
        .wait_for_text("revoked: re-enroll with a new token")
        .await;
    let seen = cp
        .admin()
        .get_agent(GetAgentRequest {
            agent_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state, AgentState::Revoked as i32);

    // After a restart of the control plane, its identity is still refused,
    // for a session and for a renewal.
    let status = cp.stop().await;
    assert!(status.success());
    let cp = ControlPlane::start_on(&cp_dir, &listen, &[]).await;
    let (cert, key) = identity_files(&state);
    let err = attach_with(&cp, &id, &cert, &key).await.unwrap_err();
    assert!(err.contains("revoked: re-enroll with a new token"), "{err}");
    let identity = Identity::from_pem(&cert, &key).unwrap();
    let config = tls::client_config(&Trust::ca_pem(&cp.ca_pem()).unwrap(), Some(identity)).unwrap();
    let channel =
        client::channel(&ControlPlaneAddr::parse(&cp.endpoint()).unwrap(), config).unwrap();
    let fresh = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&fresh)
        .unwrap();
    let err = EnrollmentClient::new(channel)
        .renew(RenewRequest {
            csr_der: csr.der().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_over_the_live_session_and_old_ones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start_on(
        &dir.path().join("cp"),
        "127.0.0.1:0",
        &["--agent-cert-lifetime", "6s"],
    )
    .await;
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let state = dir.path().join("agent");
    let agent = Agent::start(&cp.endpoint(), &state, Some(&token), &[&allow]).await;
    let id = agent.id();
    let (old_cert, old_key) = identity_files(&state);
    let gw = cp.gateway("echo", "p", echo).await;
    let mut client = held(gw).await;

    // Renewal at two thirds of the lifetime, on the live session: the
    // channel opened before it keeps working.
    agent.logs.wait_for("certificate renewed").await;
    echo_through(&mut client, b"after the first renewal").await;
    let (new_cert, _) = identity_files(&state);
    assert_ne!(
        new_cert, old_cert,
        "the state directory holds the renewed certificate"
    );
    // The second renewal happens after the first certificate expired.
    agent.logs.wait_for_nth("certificate renewed", 2).await;
    echo_through(&mut client, b"after the second renewal").await;
    assert_eq!(
        agent.logs.count("attached"),
        1,
        "renewal must not drop the session"
    );

    // The first certificate, if someone kept it, no longer works.
    // (TLS 1.3 checks a client certificate after the client's side of the
    // handshake, so the client sees the connection drop; the control plane
    // says why, in its log and its metrics.)
    attach_with(&cp, &id, &old_cert, &old_key)
        .await
        .unwrap_err();
    let expired = cp
        .metric("tether_tls_handshake_failures_total{reason=\"client_certificate_expired\"}")
        .await;
    assert_eq!(expired, 1.0);
    cp.logs
        .wait_for_text("TLS handshake refused a client certificate")
        .await;
    // The agent, restarted, attaches with its current certificate.
    agent.kill9().await;
    let agent = Agent::start(&cp.endpoint(), &state, None, &[&allow]).await;
    assert_eq!(agent.id(), id);
}

/// A client certificate for `cn` signed by `issuer`, valid from `from` to
/// `to` seconds relative to now.
fn client_cert(cn: &str, issuer: &Issuer<'_, KeyPair>, from: i64, to: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_future_and_unknown_certificates_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    let allow = echo.to_string();
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&allow],
    )
    .await;
    let id = agent.id();
    let gw = cp.gateway("echo", "p", echo).await;
    let mut bystander = held(gw).await;

    let ca_pem = std::fs::read_to_string(cp.data_dir.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(cp.data_dir.join("ca.key")).unwrap()).unwrap();
    let ours = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::default();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = Issuer::new(other_params, other_key);

    let cases = [
        (
            "another CA",
            client_cert(&id, &other, -60, 3600),
            "tether_tls_handshake_failures_total{reason=\"client_certificate_unknown_ca\"}",
        ),
        (
            "expired",
            client_cert(&id, &ours, -7200, -3600),
            "tether_tls_handshake_failures_total{reason=\"client_certificate_expired\"}",
        ),
        (
            "not yet valid",
            client_cert(&id, &ours, 3600, 7200),
            "tether_tls_handshake_failures_total{reason=\"client_certificate_not_yet_valid\"}",
        ),
    ];
    for (what, (cert, key), metric) in cases {
        let err = attach_with(&cp, &id, cert.as_bytes(), key.as_bytes())
            .await
            .unwrap_err();
        assert!(!err.is_empty(), "{what}");
        assert_eq!(cp.metric(metric).await, 1.0, "{what}: {err}");
    }
    // Signed by our CA, valid, but naming no enrolled agent.
    let (cert, key) = client_cert("agent-nobody", &ours, -60, 3600);
    let err = attach_with(&cp, "agent-nobody", cert.as_bytes(), key.as_bytes())
        .await
        .unwrap_err();
    assert!(err.contains("not enrolled at this control plane"), "{err}");
    // The real agent's channel went on through all of it.
    echo_through(&mut bystander, b"untouched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_reported_with_the_offset_and_the_fix() {
    use tether::proto::{Heartbeat, agent_frame};
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let raw = cp.raw_session("p").await;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    // An agent whose clock runs five minutes ahead.
    raw.tx
        .send(AgentFrame {
            kind: Some(agent_frame::Kind::Heartbeat(Heartbeat {
                sequence: 1,
                agent_time_unix_ms: now_ms + 300_000,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    cp.logs
        .wait_for_text("fix the agent host's clock (NTP")
        .await;
    assert!(cp.logs.text().contains("s ahead of the control plane"));
    // Also an event, marked as an alert (the webhook would get it).
    let events = cp
        .admin()
        .list_events(tether::proto::ListEventsRequest {
            after_id: 0,
            limit: 100,
            agent_id: raw.agent_id.clone(),
            newest: false,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let skew = events.iter().find(|e| e.kind == "clock_skew").unwrap();
    assert!(skew.alert && skew.detail.contains("NTP"), "{skew:?}");
    let seen = cp
        .admin()
        .get_agent(GetAgentRequest {
            agent_id: raw.agent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        (seen.clock_skew_ms - 300_000).abs() < 10_000,
        "measured {} ms",
        seen.clock_skew_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_are_never_resumed() {
    // A resumed session would skip the client-certificate check that
    // revocation relies on: every handshake must be a full one.
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let config = std::sync::Arc::new(
        tls::client_config(&Trust::ca_pem(&cp.ca_pem()).unwrap(), None).unwrap(),
    );
    let connector = tokio_rustls::TlsConnector::from(config);
    for attempt in 0..3 {
        let tcp = TcpStream::connect(cp.grpc).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // Speak HTTP/2 until the server answers: any session ticket it sent
        // comes before its first bytes, so the client has seen it.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let mut first = [0u8; 9];
        tokio::time::timeout(support::WAIT, tls.read_exact(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first[3], 4, "the server's first frame is its SETTINGS");
        let kind = tls.get_ref().1.handshake_kind();
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Full),
            "handshake {attempt} was {kind:?}"
        );
    }
}
