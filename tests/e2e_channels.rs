//! Channels through one agent session under load and under stress: a
//! thousand at once with checksums on both ends, a stalled download that
//! must not stop other channels or heartbeats, and the refusals a client
//! must be able to read (egress policy, a target that refuses).

#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use ring::digest::{SHA256, digest};
use support::{Agent, ControlPlane, WAIT};
use tether::{
    dial::{Destination, DialError, Dialer},
    proto::ResetCode,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Bytes each side sends per channel in the many-channels test.
const PER_CHANNEL: usize = 32 * 1024;

fn random(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut v).unwrap();
    v
}

/// Target for the many-channels test: reads everything the client sends
/// until its half-close, answers with the SHA-256 of what it received, then
/// its own random bytes followed by their SHA-256, and closes.
async fn checksum_server() -> SocketAddr {
    // A backlog above the thousand connects that arrive at once: with the
    // default 1024 the kernel may fall back to SYN cookies under load and
    // reset a connection, which is the target's failure, not the tunnel's.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded by the test's connection count; an accept error (a
        // connection aborted in the queue, a full fd table) is survived, not
        // the end of the server, which would reset every queued connection.
        for _ in 0..10_000 {
            let mut s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("checksum server: accept failed: {e}");
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                let reply = random(PER_CHANNEL);
                s.write_all(digest(&SHA256, &got).as_ref()).await.unwrap();
                s.write_all(&reply).await.unwrap();
                s.write_all(digest(&SHA256, &reply).as_ref()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// One client: sends random bytes, half-closes, checks both checksums.
/// An I/O failure is returned (not panicked) so that the test can show the
/// control plane's and agent's warnings next to it.
async fn checksum_client(gateway: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(gateway).await?;
    let sent = random(PER_CHANNEL);
    s.write_all(&sent).await?;
    s.shutdown().await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    assert_eq!(reply.len(), 32 + PER_CHANNEL + 32, "short reply");
    assert_eq!(
        &reply[..32],
        digest(&SHA256, &sent).as_ref(),
        "the target received other bytes than were sent"
    );
    let body = &reply[32..32 + PER_CHANNEL];
    assert_eq!(
        &reply[32 + PER_CHANNEL..],
        digest(&SHA256, body).as_ref(),
        "the client received corrupted bytes"
    );
    Ok(())
}

/// The WARN and ERROR lines of a process's JSON log.
fn warnings(logs: &support::Logs) -> String {
    logs.text()
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_channels_through_one_session_arrive_intact() {
    support::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let target = checksum_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("bulk", 1).await;
    let allow = target.to_string();
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&allow],
    )
    .await;
    let gw = cp.gateway("sums", "bulk", target).await;

    let clients: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(checksum_client(gw)))
        .collect();
    for c in clients {
        if let Err(e) = tokio::time::timeout(WAIT, c).await.unwrap().unwrap() {
            panic!(
                "a client failed: {e}\ncontrol plane warnings:\n{}\nagent warnings:\n{}",
                warnings(&cp.logs),
                warnings(&agent.logs)
            );
        }
    }
    let opened = cp
        .metric("tether_channels_opened_total{pool=\"bulk\",path=\"gateway\"}")
        .await;
    assert_eq!(opened, 1000.0);
    let sessions = cp.metric("tether_agent_sessions").await;
    assert_eq!(sessions, 1.0, "all channels must share the one session");
}

/// A target that streams bytes without end to whoever connects.
async fn firehose() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x42u8; 64 * 1024];
                // Ends when the client goes away (write fails).
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_does_not_stop_other_channels_or_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let hose = firehose().await;
    let echo = support::echo_server().await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    let rules = [hose.to_string(), echo.to_string()];
    let _agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&rules[0], &rules[1]],
    )
    .await;
    let hose_gw = cp.gateway("hose", "p", hose).await;
    let echo_gw = cp.gateway("echo", "p", echo).await;

    // The stalled client: reads one byte to know the stream flows, then
    // never again.
    let mut stalled = TcpStream::connect(hose_gw).await.unwrap();
    let mut one = [0u8; 1];
    stalled.read_exact(&mut one).await.unwrap();
    let heartbeats_before = cp.metric("tether_heartbeats_total").await;

    // Meanwhile: 64 MiB round trip on another channel of the same session.
    let mut s = TcpStream::connect(echo_gw).await.unwrap();
    let (mut r, mut w) = s.split();
    let total = 64 * 1024 * 1024usize;
    let writer = async {
        let chunk = vec![7u8; 256 * 1024];
        for _ in 0..total / chunk.len() {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break got;
            }
            assert!(buf[..n].iter().all(|&b| b == 7));
            got += n;
        }
    };
    let ((), got) = tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("the echo channel stalled behind the stalled download");
    assert_eq!(got, total);

    // Heartbeats kept flowing on the same session while the download was
    // stalled: wait (bounded) for ten more.
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let now = cp.metric("tether_heartbeats_total").await;
            if now >= heartbeats_before + 10.0 {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "heartbeats stopped while a channel was stalled"
    );
    // The stalled channel is still open, still stalled, and bounded: the
    // session holds at most its window for it.
    let open = cp.metric("tether_channels_open{pool=\"p\"}").await;
    assert!(open >= 1.0, "the stalled channel must still be open");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_client_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let echo = support::echo_server().await;
    let closed = {
        // A port with nothing listening: bind, note, close.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("p", 1).await;
    let rules = [echo.to_string(), closed.to_string()];
    let _agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&rules[0], &rules[1]],
    )
    .await;
    let dialer = Dialer::connect(&cp.endpoint(), &cp.credentials()).unwrap();

    // Egress policy: the agent says which rule to add.
    let err = dialer
        .dial(Destination::pool("p", "127.0.0.1", 9))
        .await
        .unwrap_err();
    match err {
        DialError::Refused { code, message } => {
            assert_eq!(code, ResetCode::PolicyDenied);
            assert!(
                message.contains("add \"127.0.0.1:9\" to egress_allow"),
                "{message}"
            );
        }
        other => panic!("expected a policy refusal, got {other}"),
    }
    // Nothing listening: refused, and said so.
    let err = dialer
        .dial(Destination::pool("p", "127.0.0.1", closed.port()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DialError::Refused {
                code: ResetCode::Refused,
                ..
            }
        ),
        "{err}"
    );
    // No agent in the pool: the control plane says how to get one.
    let err = dialer
        .dial(Destination::pool("nobody", "127.0.0.1", echo.port()))
        .await
        .unwrap_err();
    match err {
        DialError::Status(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert!(
                s.message()
                    .contains("tetherctl tokens create --pool nobody"),
                "{}",
                s.message()
            );
        }
        other => panic!("expected UNAVAILABLE, got {other}"),
    }
    // An unknown connection name.
    let err = dialer
        .dial(Destination::connection("nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DialError::Status(s) if s.code() == tonic::Code::NotFound),
        "{err}"
    );
    // And the allowed target still works after all that.
    let mut ok = dialer
        .dial(Destination::pool("p", "127.0.0.1", echo.port()))
        .await
        .unwrap();
    ok.write_all(b"ping").await.unwrap();
    ok.shutdown().await.unwrap();
    let mut back = Vec::new();
    ok.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");
    let denied = cp
        .metric("tether_dial_errors_total{reason=\"policy_denied\"}")
        .await;
    assert_eq!(denied, 1.0);
}
