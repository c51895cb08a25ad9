//! The SOCKS5 front: RFC 1928 CONNECT with RFC 1929 username (the pool or
//! `connection:NAME`) and password (an API key), spoken byte by byte so that
//! every reply code is checked, and used by a real client: pgJDBC with the
//! JVM's own SOCKS support (`socksProxyHost`).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use support::{Agent, ControlPlane, WAIT};
use tether::proto::{CreateConnectionRequest, RevokeApiKeyRequest, Role};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

/// A control plane with the SOCKS5 front on a free loopback port.
async fn start(dir: &std::path::Path) -> (ControlPlane, SocketAddr) {
    let cp = ControlPlane::start_on(
        &dir.join("cp"),
        "127.0.0.1:0",
        &["--socks-listen", "127.0.0.1:0"],
    )
    .await;
    let ready = cp.logs.wait_for("control plane ready").await;
    let front = ready["socks"].as_str().unwrap().parse().unwrap();
    (cp, front)
}

/// Greets with `methods`; returns the socket and the chosen method.
async fn greet(front: SocketAddr, methods: &[u8]) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut hello = vec![5, u8::try_from(methods.len()).unwrap()];
    hello.extend_from_slice(methods);
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut answer))
        .await
        .expect("a method selection within the wait")
        .unwrap();
    assert_eq!(answer[0], 5, "SOCKS version in the method selection");
    (s, answer[1])
}

/// RFC 1929: returns the status (0 = accepted).
async fn login(s: &mut TcpStream, user: &str, password: &str) -> u8 {
    let mut m = vec![1, u8::try_from(user.len()).unwrap()];
    m.extend_from_slice(user.as_bytes());
    m.push(u8::try_from(password.len()).unwrap());
    m.extend_from_slice(password.as_bytes());
    s.write_all(&m).await.unwrap();
    let mut answer = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut answer))
        .await
        .expect("a login answer within the wait")
        .unwrap();
    assert_eq!(answer[0], 1, "sub-negotiation version");
    answer[1]
}

/// A CONNECT request to an address.
fn to_addr(a: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = a else {
        panic!("IPv4 only here")
    };
    let mut m = vec![5, 1, 0, 1];
    m.extend_from_slice(&v4.ip().octets());
    m.extend_from_slice(&a.port().to_be_bytes());
    m
}

/// A CONNECT request to a name.
fn to_name(name: &str, port: u16) -> Vec<u8> {
    let mut m = vec![5, 1, 0, 3, u8::try_from(name.len()).unwrap()];
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&port.to_be_bytes());
    m
}

/// Sends a request; returns the reply code (the whole reply is read).
async fn request(s: &mut TcpStream, m: &[u8]) -> u8 {
    s.write_all(m).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("a reply within the wait")
        .unwrap();
    assert_eq!(head[0], 5);
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("reply address type {other}"),
    };
    let mut addr = vec![0u8; rest];
    s.read_exact(&mut addr).await.unwrap();
    head[1]
}

/// Logs in as `user` with `key` and sends `m`; returns the reply code and
/// the socket.
async fn dial(front: SocketAddr, user: &str, key: &str, m: &[u8]) -> (u8, TcpStream) {
    let (mut s, method) = greet(front, &[0, 2]).await;
    assert_eq!(method, 2, "username/password is chosen");
    assert_eq!(login(&mut s, user, key).await, 0, "{user} may log in");
    let code = request(&mut s, m).await;
    (code, s)
}

async fn echo_once(s: &mut TcpStream) {
    s.write_all(b"through socks").await.unwrap();
    let mut back = [0u8; 13];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"through socks");
}

/// A loopback port that refuses connections: bound (so nothing else takes
/// it) but not listening. Keep the socket while the port is used.
fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_clients_reach_targets_and_every_refusal_has_its_reply_code() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, front) = start(dir.path()).await;
    let echo = support::echo_server().await;
    let (_closed_socket, closed) = closed_port();
    let token = cp.token("p", 1).await;
    let rules = [
        echo.to_string(),
        closed.to_string(),
        "*.invalid:*".to_owned(),
    ];
    let _agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[&rules[0], &rules[1], &rules[2]],
    )
    .await;
    cp.admin()
        .create_connection(CreateConnectionRequest {
            name: "echo".into(),
            pool: "p".into(),
            target_host: echo.ip().to_string(),
            target_port: u32::from(echo.port()),
            gateway_listen: String::new(),
        })
        .await
        .unwrap();
    let dialer = cp
        .key(Role::Dialer, "default", &[], &["p", "nobody-home"])
        .await;
    let conn_dialer = cp.key(Role::Dialer, "default", &["echo"], &[]).await;
    let other = cp.key(Role::Dialer, "default", &[], &["q"]).await;
    let viewer = cp.key(Role::Viewer, "default", &[], &[]).await;
    let revoked = cp.key(Role::Dialer, "default", &[], &["p"]).await;
    cp.admin()
        .revoke_api_key(RevokeApiKeyRequest {
            key_id: revoked.split('.').nth(2).unwrap().to_owned(),
        })
        .await
        .unwrap();

    // Through, by address, by name (the agent resolves it) and by connection.
    let (code, mut s) = dial(front, "p", &dialer, &to_addr(echo)).await;
    assert_eq!(code, 0, "CONNECT succeeds");
    echo_once(&mut s).await;
    let (code, mut s) = dial(front, "pool:p", &dialer, &to_name("localhost", echo.port())).await;
    assert_eq!(code, 0, "a name is resolved by the agent");
    echo_once(&mut s).await;
    let (code, mut s) = dial(front, "connection:echo", &conn_dialer, &to_addr(echo)).await;
    assert_eq!(code, 0, "a connection's own target");
    echo_once(&mut s).await;

    // No username/password offered: no acceptable method.
    let (_, method) = greet(front, &[0]).await;
    assert_eq!(method, 0xff);
    // A bad key, a key that may not dial: the login fails.
    let (mut s, _) = greet(front, &[2]).await;
    assert_ne!(
        login(&mut s, "p", "tether-key.v1.0000000000000000.00").await,
        0
    );
    let (mut s, _) = greet(front, &[2]).await;
    assert_ne!(
        login(&mut s, "p", &viewer).await,
        0,
        "a viewer may not dial"
    );
    let (mut s, _) = greet(front, &[2]).await;
    assert_ne!(login(&mut s, "bad name!", &dialer).await, 0);
    let (mut s, _) = greet(front, &[2]).await;
    assert_ne!(
        login(&mut s, &dialer, "p").await,
        0,
        "username and password swapped"
    );
    let (mut s, _) = greet(front, &[2]).await;
    let unknown = format!("tether-key.v1.{}.{}", "0".repeat(16), "1".repeat(64));
    assert_ne!(login(&mut s, "p", &unknown).await, 0, "an unknown key");
    let (mut s, _) = greet(front, &[2]).await;
    assert_ne!(login(&mut s, "p", &revoked).await, 0, "a revoked key");

    // Refusals after the login, each with its code.
    let with_command = |command: u8| {
        let mut m = to_addr(echo);
        m[1] = command;
        m
    };
    let (d, c, o) = (dialer.as_str(), conn_dialer.as_str(), other.as_str());
    let cases: Vec<(&str, &str, &str, Vec<u8>, u8)> = vec![
        ("not granted", "p", o, to_addr(echo), 2),
        (
            "egress policy",
            "p",
            d,
            to_addr("127.0.0.1:1".parse().unwrap()),
            2,
        ),
        (
            "not the connection's target",
            "connection:echo",
            c,
            to_addr(closed),
            2,
        ),
        ("no agent online", "nobody-home", d, to_addr(echo), 3),
        (
            "name does not resolve",
            "p",
            d,
            to_name("no-such-host.invalid", 80),
            4,
        ),
        ("target refused", "p", d, to_addr(closed), 5),
        ("BIND", "p", d, with_command(2), 7),
        ("UDP ASSOCIATE", "p", d, with_command(3), 7),
        ("address type", "p", d, vec![5, 1, 0, 9], 8),
    ];
    for (what, user, key, m, want) in &cases {
        let (code, _s) = dial(front, user, key, m).await;
        assert_eq!(code, *want, "{what}");
    }

    // Counted by reply (before the client hears it), and logged with the
    // reason.
    let metric = |reply: &str| format!("tether_socks_requests_total{{reply=\"{reply}\"}}");
    for (reply, count) in [
        ("succeeded", 3.0),
        // The method, 6 logins, 3 refusals after the login.
        ("not_allowed", 10.0),
        ("network_unreachable", 1.0),
        ("host_unreachable", 1.0),
        ("connection_refused", 1.0),
        ("command_not_supported", 2.0),
        ("address_type_not_supported", 1.0),
    ] {
        assert_eq!(cp.metric(&metric(reply)).await, count, "{reply}");
    }
    let opened = cp
        .metric("tether_channels_opened_total{pool=\"p\",path=\"socks\"}")
        .await;
    assert!(opened >= 3.0, "channels through the front: {opened}");
    for reason in [
        "no agent of pool \\\"nobody-home\\\" is online",
        "may not dial pool \\\"p\\\"",
        "offered no username/password",
        "needs role dialer, operator or admin",
        "reaches 127.0.0.1",
        "looks like an API key",
        "address type 9 is not supported",
    ] {
        cp.logs.wait_for_text(reason).await;
    }
    // The password is an API key: it never reaches the log, not even when
    // a client swaps username and password.
    let log = cp.logs.text();
    for key in [&dialer, &conn_dialer, &other, &viewer, &revoked, &unknown] {
        let secret = key.rsplit('.').next().unwrap();
        assert!(!log.contains(secret), "a key's secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_through_the_socks_front() {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "{jar} is missing: install libpostgresql-jdbc-java (scripts/install-test-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cp, front) = start(dir.path()).await;
    let token = cp.token("db", 1).await;
    let _agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &["localhost:5432"],
    )
    .await;
    let key = cp.key(Role::Dialer, "default", &[], &["db"]).await;
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/JdbcQuery.java");
    let out = tokio::time::timeout(
        WAIT * 4,
        Command::new("java")
            .arg(format!("-DsocksProxyHost={}", front.ip()))
            .arg(format!("-DsocksProxyPort={}", front.port()))
            // The JVM sends loopback names and addresses around a SOCKS
            // proxy unless this is set empty; a database in a private
            // network is neither, but here it is on 127.0.0.1.
            .arg("-DsocksNonProxyHosts=")
            .arg("-Dtether.socks.username=db")
            .env("TETHER_SOCKS_PASSWORD", &key)
            .args(["-cp", jar, program])
            // A name the agent resolves, not the client.
            .args(["jdbc:postgresql://localhost:5432/test", "postgres", "250"])
            .output(),
    )
    .await
    .expect("java finishes")
    .expect("java runs: install default-jre-headless (scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("JDBC_OK rows=250"),
        "pgJDBC through the SOCKS front failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let opened = cp
        .metric("tether_channels_opened_total{pool=\"db\",path=\"socks\"}")
        .await;
    assert!(
        opened >= 1.0,
        "pgJDBC did not go through the front: {opened}"
    );
}
