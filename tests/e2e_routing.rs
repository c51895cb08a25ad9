//! Routing channels to the agents of a pool: least loaded first; fail over
//! to the next agent when one cannot take a channel for a reason of its own
//! (draining, out of channels); never fail over when the target refused,
//! because another agent would reach the same target.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashMap, time::Duration};

use support::{Agent, ControlPlane, RawSession};
use tether::{
    dial::{Destination, DialError, Dialer},
    proto::{
        AgentFrame, ChannelOpenResult, Heartbeat, ListAgentsRequest, ResetCode, agent_frame,
        server_frame,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// Plays an agent that answers every channel open with `code`, keeps its
/// heartbeats fresh, and reports each open it saw.
fn refusing_agent(raw: RawSession, code: ResetCode) -> mpsc::Receiver<u64> {
    let (seen_tx, seen) = mpsc::channel(16);
    let RawSession {
        tx, mut inbound, ..
    } = raw;
    // Ends when the control plane ends the session or the test drops `seen`.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sequence = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sequence += 1;
                    let hb = AgentFrame { kind: Some(agent_frame::Kind::Heartbeat(Heartbeat { sequence, ..Default::default() })) };
                    if tx.send(hb).await.is_err() { break; }
                }
                frame = inbound.message() => {
                    let Ok(Some(frame)) = frame else { break };
                    if let Some(server_frame::Kind::ChannelOpen(open)) = frame.kind {
                        let answer = ChannelOpenResult {
                            channel_id: open.channel_id,
                            initial_window: 0,
                            error_code: code as i32,
                            error_message: format!("the test agent answers {}", code.as_str_name()),
                        };
                        let reply = AgentFrame { kind: Some(agent_frame::Kind::ChannelOpenResult(answer)) };
                        if tx.send(reply).await.is_err() || seen_tx.send(open.channel_id).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    seen
}

/// A real agent for `pool` with one channel held open through `gateway`,
/// so that an idle test agent is the least loaded.
async fn loaded_agent(
    cp: &ControlPlane,
    dir: &std::path::Path,
    pool: &str,
) -> (Agent, TcpStream, std::net::SocketAddr) {
    let echo = support::echo_server().await;
    let token = cp.token(pool, 1).await;
    let allow = echo.to_string();
    let agent = Agent::start(&cp.endpoint(), &dir.join("agent"), Some(&token), &[&allow]).await;
    let gw = cp.gateway("echo", pool, echo).await;
    let mut held = TcpStream::connect(gw).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.unwrap();
    (agent, held, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_is_skipped_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let (agent, _held, echo) = loaded_agent(&cp, dir.path(), "p").await;
    let mut seen = refusing_agent(cp.raw_session("p").await, ResetCode::Draining);

    let dialer = Dialer::connect(&cp.endpoint(), &cp.credentials()).unwrap();
    let mut s = dialer
        .dial(Destination::pool("p", "127.0.0.1", echo.port()))
        .await
        .unwrap();
    assert!(
        seen.try_recv().is_ok(),
        "the idle (draining) agent must have been asked first"
    );
    assert_eq!(
        s.agent_id(),
        agent.id(),
        "the channel must have failed over to the working agent"
    );
    s.write_all(b"failed over").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"failed over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusal_is_the_clients_answer_not_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let (_agent, _held, echo) = loaded_agent(&cp, dir.path(), "p").await;
    let mut seen = refusing_agent(cp.raw_session("p").await, ResetCode::Refused);

    let dialer = Dialer::connect(&cp.endpoint(), &cp.credentials()).unwrap();
    let err = dialer
        .dial(Destination::pool("p", "127.0.0.1", echo.port()))
        .await
        .unwrap_err();
    match err {
        DialError::Refused { code, message } => {
            assert_eq!(code, ResetCode::Refused);
            assert!(message.contains("the test agent answers"), "{message}");
        }
        other => panic!("expected the target's refusal, got {other}"),
    }
    assert!(seen.try_recv().is_ok());
    let opened = cp
        .metric("tether_channels_opened_total{pool=\"p\",path=\"dial\"}")
        .await;
    assert_eq!(opened, 0.0, "no other agent may have opened the channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_go_to_the_least_loaded_agent() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let allow = echo.to_string();
    let mut agents = Vec::new();
    for name in ["a", "b"] {
        let token = cp.token("lb", 1).await;
        agents.push(
            Agent::start(
                &cp.endpoint(),
                &dir.path().join(name),
                Some(&token),
                &[&allow],
            )
            .await,
        );
    }
    let gw = cp.gateway("echo", "lb", echo).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        held.push(s);
    }
    let list = cp
        .admin()
        .list_agents(ListAgentsRequest {
            pool: "lb".into(),
            state: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let load: HashMap<String, u32> = list
        .agents
        .into_iter()
        .map(|a| (a.agent_id, a.open_channels))
        .collect();
    let (a, b) = (load[&agents[0].id()], load[&agents[1].id()]);
    assert_eq!(a + b, 10, "{load:?}");
    assert!(
        a.abs_diff(b) <= 1,
        "channels must be spread evenly: {load:?}"
    );
}
