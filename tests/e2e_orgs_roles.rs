//! Orgs and roles (invariant 7): two orgs side by side, each with an agent in
//! a pool of the same name and a gateway; nothing of one org is listed,
//! reachable, dialable or routable from the other. Each role may do exactly
//! its share, and refusals name the role that would do. The audit log
//! records who did what, and never a secret.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use support::{Agent, ControlPlane};
use tether::{
    dial::{Destination, DialError, Dialer},
    proto::{
        CreateConnectionRequest, CreateEnrollmentTokenRequest, DeleteConnectionRequest,
        GetAgentRequest, ListAgentsRequest, ListAuditEventsRequest, ListConnectionsRequest,
        ListEnrollmentTokensRequest, RevokeApiKeyRequest, RevokeEnrollmentTokenRequest, Role,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

/// One org's agent, token id and gateway.
struct OrgSide {
    key: String,
    agent: Agent,
    echo: SocketAddr,
    token_id: String,
    gateway: SocketAddr,
}

async fn org_side(cp: &ControlPlane, dir: &std::path::Path, key: String, name: &str) -> OrgSide {
    let echo = support::echo_server().await;
    let mut admin = cp.admin_with(&key);
    let token = admin
        .create_enrollment_token(CreateEnrollmentTokenRequest {
            pool: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let allow = echo.to_string();
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.join(name),
        Some(&token.join_token),
        &[&allow],
    )
    .await;
    let gateway = admin
        .create_connection(CreateConnectionRequest {
            name: format!("echo-{name}"),
            pool: "p".into(),
            target_host: echo.ip().to_string(),
            target_port: u32::from(echo.port()),
            gateway_listen: "127.0.0.1:0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .gateway_address
        .parse()
        .unwrap();
    OrgSide {
        key,
        agent,
        echo,
        token_id: token.token.unwrap().token_id,
        gateway,
    }
}

async fn held(gateway: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gateway).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orgs_never_see_or_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let a = org_side(&cp, dir.path(), cp.api_key(), "a").await;
    let acme_key = cp.key(Role::Admin, "acme", &[], &[]).await;
    let b = org_side(&cp, dir.path(), acme_key, "b").await;
    let mut admin_b = cp.admin_with(&b.key);

    // Admin: lists hold only the caller's org; the other org's ids are
    // NOT_FOUND, never PERMISSION_DENIED.
    let agents = admin_b
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(
        agents
            .iter()
            .map(|x| x.agent_id.clone())
            .collect::<Vec<_>>(),
        [b.agent.id()]
    );
    let err = admin_b
        .get_agent(GetAgentRequest {
            agent_id: a.agent.id(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let conns = admin_b
        .list_connections(ListConnectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(
        conns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["echo-b"]
    );
    let tokens = admin_b
        .list_enrollment_tokens(ListEnrollmentTokensRequest {
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(
        tokens
            .iter()
            .all(|t| t.org_id == "acme" && t.token_id != a.token_id)
    );
    let err = admin_b
        .revoke_enrollment_token(RevokeEnrollmentTokenRequest {
            token_id: a.token_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin_b
        .delete_connection(DeleteConnectionRequest {
            name: "echo-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Dial: the same pool name routes within the caller's org only.
    let dial_b = Dialer::connect(&cp.endpoint(), &cp.credentials_with(&b.key)).unwrap();
    let sb = dial_b
        .dial(Destination::pool("p", "127.0.0.1", b.echo.port()))
        .await
        .unwrap();
    assert_eq!(
        sb.agent_id(),
        b.agent.id(),
        "pool p of org acme is acme's agent"
    );
    let err = dial_b
        .dial(Destination::connection("echo-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DialError::Status(s) if s.code() == Code::NotFound),
        "{err}"
    );
    let dial_a = Dialer::connect(&cp.endpoint(), &cp.credentials()).unwrap();
    let sa = dial_a
        .dial(Destination::connection("echo-a"))
        .await
        .unwrap();
    assert_eq!(sa.agent_id(), a.agent.id());

    // Gateways and the tunnel: org a's gateway reaches org a's agent only.
    let _ha = held(a.gateway).await;
    let _hb = held(b.gateway).await;
    let mut admin_a = cp.admin();
    let seen_a = admin_a
        .get_agent(GetAgentRequest {
            agent_id: a.agent.id(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen_b = admin_b
        .get_agent(GetAgentRequest {
            agent_id: b.agent.id(),
        })
        .await
        .unwrap()
        .into_inner();
    // Each agent carries its org's dial and gateway channel, nothing more.
    assert_eq!(seen_a.open_channels, 2, "org a's dial and gateway channels");
    assert_eq!(seen_b.open_channels, 2, "org b's dial and gateway channels");
    drop((sa, sb));

    // A non-operator org may not mint keys for another org.
    let err = admin_b
        .create_api_key(tether::proto::CreateApiKeyRequest {
            role: Role::Admin as i32,
            org_id: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The audit logs are separate too.
    let audit_b = support::audit_events(&mut admin_b).await;
    assert!(
        audit_b
            .iter()
            .any(|e| e.action == "CreateConnection" && e.target == "echo-b")
    );
    // b's own refused attempt on a's connection is in b's log, and none of
    // b's actions are in a's.
    assert!(
        audit_b
            .iter()
            .any(|e| e.action == "DeleteConnection" && e.result == "NotFound")
    );
    let b_key_id = b.key.split('.').nth(2).unwrap().to_owned();
    let audit_a = support::audit_events(&mut admin_a).await;
    assert!(!audit_a.is_empty());
    assert!(audit_a.iter().all(|e| e.key_id != b_key_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_share_and_refusals_name_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let side = org_side(&cp, dir.path(), cp.api_key(), "a").await;

    let viewer = cp.key(Role::Viewer, "", &[], &[]).await;
    let mut v = cp.admin_with(&viewer);
    v.list_agents(ListAgentsRequest::default()).await.unwrap();
    let err = v
        .create_enrollment_token(CreateEnrollmentTokenRequest {
            pool: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("needs role operator or admin; this key has role viewer"),
        "{}",
        err.message()
    );

    let operator = cp.key(Role::Operator, "", &[], &[]).await;
    let mut o = cp.admin_with(&operator);
    o.create_enrollment_token(CreateEnrollmentTokenRequest {
        pool: "p".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = o
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("needs role admin"),
        "{}",
        err.message()
    );

    // A dialer dials what it is granted, and nothing else.
    let dialer = cp.key(Role::Dialer, "", &["echo-a"], &[]).await;
    let d = Dialer::connect(&cp.endpoint(), &cp.credentials_with(&dialer)).unwrap();
    let mut s = d.dial(Destination::connection("echo-a")).await.unwrap();
    s.write_all(b"granted").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"granted");
    for dest in [
        Destination::pool("p", "127.0.0.1", 22),
        Destination::connection("other"),
    ] {
        let err = d.dial(dest).await.unwrap_err();
        match err {
            DialError::Status(st) => {
                assert_eq!(st.code(), Code::PermissionDenied);
                assert!(
                    st.message()
                        .contains("ask an admin for a key with that grant"),
                    "{}",
                    st.message()
                );
            }
            other => panic!("expected PERMISSION_DENIED, got {other}"),
        }
    }
    let err = cp
        .admin_with(&dialer)
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A viewer may not dial.
    let err = Dialer::connect(&cp.endpoint(), &cp.credentials_with(&viewer))
        .unwrap()
        .dial(Destination::connection("echo-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DialError::Status(st) if st.code() == Code::PermissionDenied),
        "{err}"
    );

    // A revoked key stops working at once.
    let key_id = viewer.split('.').nth(2).unwrap().to_owned();
    cp.admin()
        .revoke_api_key(RevokeApiKeyRequest { key_id })
        .await
        .unwrap();
    let err = v
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The audit log has the refusals and the changes, with the caller's
    // address, and none of the keys' secrets.
    let events = support::audit_events(&mut cp.admin()).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "CreateEnrollmentToken" && e.result == "PermissionDenied")
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "Dial" && e.result == "PermissionDenied")
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "RevokeApiKey" && e.result == "ok")
    );
    assert!(
        events
            .iter()
            .all(|e| e.peer_address.starts_with("127.0.0.1:"))
    );
    let text = format!("{events:?}");
    for key in [&viewer, &operator, &dialer] {
        let secret = key.rsplit('.').next().unwrap();
        assert!(!text.contains(secret), "a key's secret is in the audit log");
    }
    drop(side);
}
