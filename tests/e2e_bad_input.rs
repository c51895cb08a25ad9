//! Hostile and broken input gets a clear error and leaves every other
//! session untouched (invariant 8): garbage and plain HTTP on the gRPC port,
//! wrong and reused join tokens, a CSR asking for more than it may get, a
//! frame for a channel that does not exist, an oversize message, a missing
//! API key. Each test checks afterwards that a real agent's channel still
//! works. Also: grpcurl lists, describes and calls the API.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::{Agent, ControlPlane};
use tether::{
    join::JoinToken,
    proto::{
        AgentFrame, ChannelData, Heartbeat, ListAgentsRequest, ResetCode,
        admin_client::AdminClient, agent_frame, server_frame,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A control plane with a working agent and an echo gateway, to prove
/// that bad input elsewhere leaves it alone.
struct World {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    _agent: Agent,
    gateway: SocketAddr,
}

impl World {
    async fn new() -> Self {
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
        let gateway = cp.gateway("echo", "p", echo).await;
        Self {
            _dir: dir,
            cp,
            _agent: agent,
            gateway,
        }
    }

    /// The bystander: a channel through the real agent still works.
    async fn still_works(&self) {
        let mut s = TcpStream::connect(self.gateway).await.unwrap();
        s.write_all(b"still here").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(support::WAIT, s.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"still here");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plain_http_on_the_grpc_port_get_clear_answers() {
    let w = World::new().await;
    // Plain HTTP/1: a 400 that says to use TLS.
    let mut s = TcpStream::connect(w.cp.grpc).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(support::WAIT, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("gRPC over TLS 1.3"), "{answer}");
    // Random bytes: the connection is closed, and counted.
    let mut s = TcpStream::connect(w.cp.grpc).await.unwrap();
    s.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42, 0x99])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(support::WAIT, s.read_to_end(&mut sink))
        .await
        .unwrap();
    assert!(sink.is_empty());
    assert_eq!(
        w.cp.metric("tether_tls_handshake_failures_total{reason=\"not_tls\"}")
            .await,
        1.0
    );
    assert_eq!(
        w.cp.metric("tether_tls_handshake_failures_total{reason=\"plaintext_http\"}")
            .await,
        1.0
    );
    w.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_reused_join_tokens_are_refused_with_the_fix() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let good = w.cp.token("p", 1).await;
    // A wrong secret with the right shape and the right pin.
    let parsed = JoinToken::parse(&good).unwrap();
    let wrong = format!(
        "tether-join.v1.{}.{}.{}",
        parsed.token_id,
        "0".repeat(64),
        parsed.pin.to_hex()
    );
    for (name, token) in [
        ("wrong", wrong.as_str()),
        ("first", good.as_str()),
        ("reused", good.as_str()),
    ] {
        let mut agent = Agent::spawn(&w.cp.endpoint(), &dir.path().join(name), Some(token), &[]);
        if name == "first" {
            agent.logs.wait_for("attached").await;
            continue;
        }
        let status = tokio::time::timeout(support::WAIT, agent.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !status.success(),
            "{name}: the agent must exit when its token is refused"
        );
        let log = agent.logs.text();
        assert!(
            log.contains("enrollment refused: the join token is not valid"),
            "{name}: {log}"
        );
        assert!(log.contains("tetherctl tokens create"), "{name}: {log}");
        assert!(
            !log.contains(&"0".repeat(64)),
            "{name}: the secret leaked into the log"
        );
    }
    // The operator's log says which check failed; the agent's does not.
    // The agent can exit before the control plane's log line has come
    // through its pipe, so wait for the lines rather than look once.
    w.cp.logs
        .wait_for_text("enrollment refused: wrong secret for the token")
        .await;
    w.cp.logs.wait_for_text("\"reason\":\"used up\"").await;
    w.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_asking_for_more_gets_only_a_client_certificate() {
    use x509_parser::prelude::*;
    let w = World::new().await;
    let token = w.cp.token("p", 1).await;
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let csr = params.serialize_request(&key).unwrap();
    let enrolled = w.cp.enroll_raw(&token, csr.der().to_vec()).await.unwrap();
    let der = first_pem_der(enrolled.certificate_chain_pem.as_bytes());
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca(), "a CSR must never get a CA certificate");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].contains("spiffe://tether/org/default/agent/"),
        "{names:?}"
    );
    // Garbage instead of a CSR: a clear INVALID_ARGUMENT, and the token is
    // not spent by it.
    let token = w.cp.token("p", 1).await;
    let err =
        w.cp.enroll_raw(&token, b"not a csr".to_vec())
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("PKCS#10"), "{}", err.message());
    w.still_works().await;
}

/// The DER of the first certificate in a PEM chain.
fn first_pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_for_an_unknown_channel_resets_only_that_channel() {
    let w = World::new().await;
    // Its own pool, so that routing for the bystander never picks it.
    let support::RawSession {
        tx, mut inbound, ..
    } = w.cp.raw_session("raw").await;
    tx.send(AgentFrame {
        kind: Some(agent_frame::Kind::ChannelData(ChannelData {
            channel_id: 12_345,
            payload: Bytes::from_static(b"who am I"),
        })),
    })
    .await
    .unwrap();
    let reset = support::next_frame(&mut inbound).await.unwrap().unwrap();
    match reset.kind {
        Some(server_frame::Kind::ChannelReset(r)) => {
            assert_eq!(r.channel_id, 12_345);
            assert_eq!(r.code, ResetCode::UnknownChannel as i32, "{r:?}");
            assert!(!r.message.is_empty());
        }
        other => panic!("expected a reset for the unknown channel, got {other:?}"),
    }
    // The session itself goes on: a heartbeat is answered.
    tx.send(AgentFrame {
        kind: Some(agent_frame::Kind::Heartbeat(Heartbeat {
            sequence: 7,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let ack = support::next_frame(&mut inbound).await.unwrap().unwrap();
    assert!(matches!(ack.kind, Some(server_frame::Kind::HeartbeatAck(a)) if a.sequence == 7));
    w.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_ends_only_its_own_session() {
    let w = World::new().await;
    // Its own pool, so that routing for the bystander never picks it.
    let support::RawSession {
        tx, mut inbound, ..
    } = w.cp.raw_session("raw").await;
    tx.send(AgentFrame {
        kind: Some(agent_frame::Kind::ChannelData(ChannelData {
            channel_id: 1,
            payload: Bytes::from(vec![0u8; 2 * 1024 * 1024]),
        })),
    })
    .await
    .unwrap();
    let err = loop {
        match support::next_frame(&mut inbound).await {
            Err(status) => break status,
            Ok(None) => panic!("the session ended without saying why"),
            Ok(Some(_)) => {}
        }
    };
    assert!(
        err.message().contains("too large") || err.message().contains("length"),
        "the error must say the message was too large: {err:?}"
    );
    w.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_a_valid_key_are_unauthenticated() {
    let w = World::new().await;
    let mut anonymous = AdminClient::new(w.cp.channel());
    let err = anonymous
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("authorization: Bearer"),
        "{}",
        err.message()
    );
    let forged = tether::client::ApiKey::new(secrecy::SecretString::from(format!(
        "tether-key.v1.{}.{}",
        "a".repeat(16),
        "b".repeat(64)
    )));
    let mut forged = AdminClient::with_interceptor(w.cp.channel(), forged);
    let err = forged
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    w.still_works().await;
}

async fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = match tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
    {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run grpcurl: {e}; install it with scripts/install-test-deps.sh (as root)"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_the_api() {
    let w = World::new().await;
    let ca = w.cp.data_dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let addr = w.cp.grpc.to_string();
    let (ok, out) = grpcurl(&["-cacert", ca, &addr, "list"]).await;
    assert!(ok, "{out}");
    for service in [
        "tether.v1.Admin",
        "tether.v1.Dial",
        "tether.v1.Tunnel",
        "tether.v1.Enrollment",
        "grpc.health.v1.Health",
    ] {
        assert!(out.contains(service), "{service} missing from:\n{out}");
    }
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca,
        &addr,
        "describe",
        "tether.v1.Admin.ListAgents",
    ])
    .await;
    assert!(ok && out.contains("ListAgentsRequest"), "{out}");
    let auth = format!("authorization: Bearer {}", w.cp.api_key());
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca,
        "-H",
        &auth,
        &addr,
        "tether.v1.Admin/ListAgents",
    ])
    .await;
    assert!(ok && out.contains("AGENT_STATE_CONNECTED"), "{out}");
    let (ok, out) = grpcurl(&["-cacert", ca, &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = grpcurl(&["-cacert", ca, &addr, "tether.v1.Admin/ListAgents"]).await;
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    assert!(!out.contains(&w.cp.api_key()));
}
