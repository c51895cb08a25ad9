#![allow(clippy::unwrap_used)] // test helpers: a failure should panic loudly

//! The tokio driver over an in-memory link: channels as AsyncRead +
//! AsyncWrite, half-close, resets, refusals, control frames, session end.

use std::time::Duration;

use tether::proto::{AgentFrame, Heartbeat, HeartbeatAck, agent_frame, server_frame};
use tether_tunnel::{
    AgentWire, Config, ResetCode, ServerWire, Target,
    driver::{Channel, ChannelReset, OpenError},
    memory::{self, Endpoint},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tunnel whose agent end echoes every channel back, upper-cased.
fn echo_pair() -> (Endpoint<ServerWire>, tokio::task::JoinHandle<()>) {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    let acceptor = tokio::spawn(async move {
        let _connection = agent.connection;
        while let Some(incoming) = agent.incoming.recv().await {
            let ch = incoming.accept().unwrap();
            tokio::spawn(echo_upper(ch));
        }
    });
    (cp, acceptor)
}

async fn echo_upper(mut ch: Channel<AgentWire>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = ch.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        buf[..n].make_ascii_uppercase();
        ch.write_all(&buf[..n]).await.unwrap();
    }
    ch.shutdown().await.unwrap();
}

#[tokio::test]
async fn channel_round_trip_with_half_close() {
    let (cp, _acceptor) = echo_pair();
    let mut ch = cp.connection.open(Target::new("db", 5432)).await.unwrap();
    ch.write_all(b"select 1;").await.unwrap();
    ch.shutdown().await.unwrap();
    let mut out = Vec::new();
    ch.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"SELECT 1;");
}

#[tokio::test]
async fn large_transfer_arrives_intact_in_both_directions() {
    let (cp, _acceptor) = echo_pair();
    let ch = cp.connection.open(Target::new("db", 5432)).await.unwrap();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let expected = data.to_ascii_uppercase();
    let (mut rd, mut wr) = tokio::io::split(ch);
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "payload corrupted");
}

#[tokio::test]
async fn refusal_reaches_the_opener_as_a_typed_error() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    tokio::spawn(async move {
        let incoming = agent.incoming.recv().await.unwrap();
        assert_eq!(incoming.target().to_string(), "10.1.2.3:22");
        incoming.refuse(
            ResetCode::PolicyDenied,
            "egress to 10.1.2.3:22 denied: no rule matches; add it to egress.allow",
        );
    });
    let err = cp
        .connection
        .open(Target::new("10.1.2.3", 22))
        .await
        .unwrap_err();
    let OpenError::Refused(reset) = err else {
        panic!("{err:?}")
    };
    assert_eq!(reset.code, ResetCode::PolicyDenied);
    assert!(reset.by_peer);
    assert!(reset.to_string().contains("add it to egress.allow"));
    let io: std::io::Error = reset.into();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn dropping_an_incoming_open_refuses_it() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    tokio::spawn(async move {
        let incoming = agent.incoming.recv().await.unwrap();
        drop(incoming);
        // Keep the session alive.
        agent.incoming.recv().await;
    });
    let err = cp.connection.open(Target::new("db", 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused(ChannelReset {
                code: ResetCode::Cancelled,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropping_a_channel_resets_it_for_the_peer() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ch = agent.incoming.recv().await.unwrap().accept().unwrap();
        let mut buf = [0u8; 16];
        let err = ch.read(&mut buf).await.unwrap_err();
        tx.send(err).unwrap();
        agent.incoming.recv().await;
    });
    let ch = cp.connection.open(Target::new("db", 1)).await.unwrap();
    drop(ch);
    let err = rx.await.unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let reset = err
        .get_ref()
        .unwrap()
        .downcast_ref::<ChannelReset>()
        .unwrap();
    assert_eq!(reset.code, ResetCode::Cancelled);
    assert!(reset.by_peer);
}

#[tokio::test]
async fn control_frames_reach_the_upper_layer_in_order() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    for seq in 1..=3 {
        let hb = agent_frame::Kind::Heartbeat(Heartbeat {
            sequence: seq,
            ..Default::default()
        });
        agent.connection.send_control(hb).unwrap();
    }
    let mut cp = cp;
    for seq in 1..=3 {
        match cp.control.recv().await.unwrap() {
            agent_frame::Kind::Heartbeat(hb) => assert_eq!(hb.sequence, seq),
            other => panic!("{other:?}"),
        }
    }
    cp.connection
        .send_control(server_frame::Kind::HeartbeatAck(HeartbeatAck {
            sequence: 3,
            ..Default::default()
        }))
        .unwrap();
    assert!(matches!(
        agent.control.recv().await.unwrap(),
        server_frame::Kind::HeartbeatAck(_)
    ));
}

#[tokio::test]
async fn closing_the_session_resets_open_channels_and_ends_both_drivers() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    let acceptor = tokio::spawn(async move {
        let mut ch = agent.incoming.recv().await.unwrap().accept().unwrap();
        let mut buf = [0u8; 4];
        let err = ch.read(&mut buf).await.unwrap_err();
        (err.kind(), agent.driver.await.unwrap())
    });
    let mut ch = cp.connection.open(Target::new("db", 1)).await.unwrap();
    cp.connection.close("replica shutting down");
    let err = ch.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(err.to_string().contains("replica shutting down"), "{err}");
    let (kind, agent_result) = acceptor.await.unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
    assert!(
        agent_result.is_ok(),
        "the agent saw the stream end: {agent_result:?}"
    );
    assert!(cp.driver.await.unwrap().is_err());
}

#[tokio::test]
async fn unknown_frame_kinds_are_ignored_and_counted() {
    // A raw inbound stream: one frame of a kind this build does not know
    // (no kind set), then the stream stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<AgentFrame, std::convert::Infallible>>(4);
    let parts = tether_tunnel::driver::session::<ServerWire, _, _>(
        Config::default(),
        Default::default(),
        tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    let driver = tokio::spawn(parts.driver);
    tx.send(Ok(AgentFrame { kind: None })).await.unwrap();
    tx.send(Ok(AgentFrame {
        kind: Some(agent_frame::Kind::Heartbeat(Heartbeat::default())),
    }))
    .await
    .unwrap();
    let mut control = parts.control;
    // The heartbeat after it still arrives: the session survived.
    assert!(control.recv().await.is_some());
    assert_eq!(parts.connection.unknown_frames(), 1);
    drop(tx);
    assert!(driver.await.unwrap().is_ok());
}

#[tokio::test]
async fn receive_loops_end_when_the_session_ends_even_with_live_handles() {
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    // A handle kept alive (as an upper layer that answers commands would)
    // must not keep the receive loops open after the session ends.
    let _kept = agent.connection.clone();
    cp.connection.close("going away");
    assert!(agent.control.recv().await.is_none());
    assert!(agent.incoming.recv().await.is_none());
    assert!(agent.connection.is_closed());
}

/// A channel spliced with a real loopback socket on the agent side;
/// returns the control plane's end, the socket's far end, and the splice.
async fn spliced() -> (
    tether_tunnel::memory::Endpoint<ServerWire>,
    Channel<ServerWire>,
    tokio::net::TcpStream,
    tokio::task::JoinHandle<
        Result<tether_tunnel::driver::Spliced, tether_tunnel::driver::SpliceError>,
    >,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let splice = tokio::spawn(async move {
        let _connection = agent.connection;
        let mut ch = agent.incoming.recv().await.unwrap().accept().unwrap();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connected_tx.send(()).unwrap();
        tether_tunnel::driver::splice_tcp(&mut ch, &mut tcp, |_| {}, |_| {}).await
    });
    let ch = cp.connection.open(Target::new("db", 5432)).await.unwrap();
    let (far, _) = listener.accept().await.unwrap();
    // The splice runs before the test may abort the socket.
    connected.await.unwrap();
    (cp, ch, far, splice)
}

#[tokio::test]
async fn splice_tcp_carries_both_ways_and_propagates_half_close() {
    let (_cp, mut ch, mut far, splice) = spliced().await;
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    ch.write_all(&big).await.unwrap();
    ch.shutdown().await.unwrap();
    let mut got = Vec::new();
    far.read_to_end(&mut got).await.unwrap();
    assert!(got == big, "bytes from the channel arrived changed");
    // The other direction still works after the half-close.
    far.write_all(b"answer after FIN").await.unwrap();
    far.shutdown().await.unwrap();
    let mut back = Vec::new();
    ch.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"answer after FIN");
    let moved = splice.await.unwrap().unwrap();
    assert_eq!(moved.out_of_channel, big.len() as u64);
    assert_eq!(moved.into_channel, 16);
}

#[tokio::test]
async fn splice_tcp_says_which_side_failed() {
    // The socket's peer aborts: the splice reports the stream.
    let (_cp, mut ch, far, splice) = spliced().await;
    ch.write_all(b"x").await.unwrap();
    far.set_zero_linger().unwrap();
    drop(far);
    let err = splice.await.unwrap().unwrap_err();
    assert!(
        matches!(err, tether_tunnel::driver::SpliceError::Stream(_)),
        "{err}"
    );

    // The channel is reset: the splice reports the channel.
    let (_cp, mut ch, _far, splice) = spliced().await;
    ch.reset(ResetCode::Cancelled, "client went away");
    let err = splice.await.unwrap().unwrap_err();
    assert!(
        matches!(err, tether_tunnel::driver::SpliceError::Channel(_)),
        "{err}"
    );
}
