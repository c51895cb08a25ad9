//! The SOCKS5 front: clients that speak SOCKS5 (a JVM with
//! `socksProxyHost`, curl, a browser) reach targets through agents without
//! code changes.
//!
//! RFC 1928 CONNECT with RFC 1929 username/password, nothing else: the
//! username names what to dial — a pool (`NAME` or `pool:NAME`) or a
//! connection (`connection:NAME`, whose target the request must name) — and
//! the password is an API key allowed to dial it. The requested host:port is
//! opened through an agent of the pool, so the agent's egress allow-list
//! applies as for every channel.
//!
//! Every refusal gets the RFC reply code that says why, the same reason in
//! a warning in the log, and a count in
//! `tether_socks_requests_total{reply=...}`.

pub mod protocol;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use secrecy::ExposeSecret;
use tether::proto::ResetCode;
use tether_tunnel::Target;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use self::protocol::{Host, Reply};
use crate::{
    auth::{self, Need, Principal},
    router::{self, RouteError},
    services::admin::validate::{check_connection_name, check_pool, check_target},
    splice::{self, Failed},
    state::Shared,
};

/// Greeting, authentication and request must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for its channel to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the username names.
#[derive(Debug, PartialEq, Eq)]
enum Dialing {
    Pool(String),
    Connection(String),
}

impl Dialing {
    /// `NAME` or `pool:NAME` is a pool, `connection:NAME` a connection.
    /// Errors never repeat the username: a client that swapped username
    /// and password would otherwise put its API key in the log.
    fn parse(user: &str) -> Result<Self, String> {
        if user.starts_with("tether-key.") {
            return Err("the username looks like an API key: give the pool (or connection:NAME) as the username and the key as the password".into());
        }
        let (kind, name) = match user.split_once(':') {
            Some(("pool", name)) => ("pool", name),
            Some(("connection", name)) => ("connection", name),
            Some(_) => {
                return Err(format!(
                    "the username ({} characters) has a prefix that is not known: use POOL, pool:POOL or connection:NAME",
                    user.len()
                ));
            }
            None => ("pool", user),
        };
        if kind == "pool" {
            check_pool(name).map_err(|_| {
                format!(
                    "the username ({} characters) is not a pool name: 1-63 letters, digits, '.', '-' or '_'",
                    user.len()
                )
            })?;
            Ok(Dialing::Pool(name.to_owned()))
        } else {
            check_connection_name(name).map_err(|_| {
                format!(
                    "the username ({} characters) does not name a connection: connection:NAME with 1-63 letters, digits, '-' or '_'",
                    user.len()
                )
            })?;
            Ok(Dialing::Connection(name.to_owned()))
        }
    }
}

/// A refusal: the reply code and the reason for the log, and the bytes
/// that answer the client in the phase it failed in (none when the client
/// cannot be answered any more).
struct Refusal {
    reply: Reply,
    why: String,
    answer: Option<Vec<u8>>,
    /// A client that went away mid-handshake (a port scan, a probe): not
    /// worth a warning.
    quiet: bool,
}

impl Refusal {
    fn new(reply: Reply, why: impl Into<String>) -> Self {
        Self {
            reply,
            why: why.into(),
            answer: None,
            quiet: false,
        }
    }

    fn answered(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.answer = Some(bytes.into());
        self
    }

    fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// A request that failed to read: answered with its reply code unless
    /// the connection itself failed.
    fn of_request(e: protocol::ReadError) -> Self {
        if matches!(e, protocol::ReadError::Io(_)) {
            return Self::new(Reply::GeneralFailure, e.to_string()).quiet();
        }
        let reply = e.reply();
        Self::new(reply, e.to_string()).answered(protocol::reply(reply, unspecified()))
    }
}

/// The reply for a routing failure: the RFC code closest to the cause.
fn route_reply(e: &RouteError) -> Reply {
    match e {
        RouteError::NoAgent { .. } => Reply::NetworkUnreachable,
        RouteError::AllFailed { .. } => Reply::GeneralFailure,
        RouteError::Timeout { .. } => Reply::TtlExpired,
        RouteError::Target(r) => match r.code {
            ResetCode::Refused | ResetCode::TargetReset => Reply::ConnectionRefused,
            ResetCode::Unreachable => Reply::HostUnreachable,
            ResetCode::Timeout => Reply::TtlExpired,
            ResetCode::PolicyDenied => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        },
    }
}

/// Accepts clients until `stop` fires.
pub async fn serve(state: Shared, listener: TcpListener, stop: CancellationToken) {
    if let Ok(a) = listener.local_addr() {
        info!(address = %a, "SOCKS5 front listening");
    }
    let tracker = state.tracker.clone();
    crate::accept::accept_each(listener, stop, tracker, "a SOCKS5 client", |tcp, peer| {
        client(state.clone(), tcp, peer).instrument(info_span!("socks", client = %peer))
    })
    .await;
    debug!("SOCKS5 front stopped");
}

/// What a client asked for, once authenticated.
struct Request {
    who: Principal,
    dialing: Dialing,
    host: Host,
    port: u16,
}

/// One client: the negotiation (bounded by [`HANDSHAKE_TIMEOUT`]), the
/// channel (bounded by [`OPEN_TIMEOUT`]), then the splice.
async fn client(state: Shared, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&state, &mut tcp, peer))
        .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(refusal)) => return refuse(&state, &mut tcp, refusal).await,
        Err(_) => {
            state.metrics.socks_request("handshake_timeout");
            warn!("SOCKS5 client sent no complete request within {HANDSHAKE_TIMEOUT:?}; closed");
            return;
        }
    };
    let opened = match open(&state, &request).await {
        Ok(opened) => opened,
        Err(refusal) => {
            let answer = protocol::reply(refusal.reply, unspecified());
            return refuse(&state, &mut tcp, refusal.answered(answer)).await;
        }
    };
    let Opened {
        mut channel,
        pool,
        agent_id,
        target,
    } = opened;
    // Counted before the client hears of it.
    state.metrics.socks_request(Reply::Succeeded.as_str());
    let bound = tcp.local_addr().unwrap_or_else(|_| unspecified());
    if let Err(e) = tcp
        .write_all(&protocol::reply(Reply::Succeeded, bound))
        .await
    {
        // Dropping the channel resets it at the agent.
        debug!(error = %e, "the SOCKS5 client went away before the channel was used");
        return;
    }
    let metrics = state.metrics.channel_opened(&pool, "socks");
    debug!(%agent_id, %target, channel_id = %channel.id(), "SOCKS5 channel open");
    match splice::run_tcp(&mut channel, &mut tcp, &metrics).await {
        Ok(()) => {}
        Err(Failed::Client(e)) => debug!(error = %e, "SOCKS5 client went away"),
        Err(Failed::Channel(reset)) => {
            warn!(code = ?reset.code, reason = %reset.message, "channel reset; aborting the SOCKS5 client connection");
            let _ = tcp.set_zero_linger();
        }
    }
}

/// Counts and logs a refusal, then answers it (when its phase has an
/// answer) and closes without losing that answer.
async fn refuse(state: &Shared, tcp: &mut TcpStream, r: Refusal) {
    state.metrics.socks_request(r.reply.as_str());
    if r.quiet {
        debug!(reply = r.reply.as_str(), reason = %r.why, "SOCKS5 client went away");
    } else {
        warn!(reply = r.reply.as_str(), reason = %r.why, "SOCKS5 request refused");
    }
    let Some(answer) = r.answer else { return };
    if tcp.write_all(&answer).await.is_err() {
        return;
    }
    // Closing with unread input would send a reset that can overtake the
    // answer: half-close, then read what the client still sends (bounded
    // in bytes and time) until it closes.
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        for _ in 0..16 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// A channel ready for the splice.
struct Opened {
    channel: tether_tunnel::driver::Channel<tether_tunnel::ServerWire>,
    pool: String,
    agent_id: String,
    target: String,
}

/// Writes `bytes`; a client that went away is a refusal nobody hears.
async fn send(tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), Refusal> {
    tcp.write_all(bytes).await.map_err(|e| {
        Refusal::new(Reply::GeneralFailure, format!("the client went away: {e}")).quiet()
    })
}

/// Method selection, authentication and the request, each answered.
async fn negotiate(
    state: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Request, Refusal> {
    let methods = protocol::read_greeting(tcp).await.map_err(|e| {
        let quiet = matches!(e, protocol::ReadError::Io(_));
        let r = Refusal::new(e.reply(), e.to_string());
        if quiet { r.quiet() } else { r }
    })?;
    if !methods.contains(&protocol::METHOD_PASSWORD) {
        return Err(Refusal::new(
            Reply::NotAllowed,
            "the client offered no username/password authentication; give the pool (or connection:NAME) as the username and an API key as the password",
        )
        .answered([protocol::VERSION, protocol::NO_ACCEPTABLE_METHOD]));
    }
    send(tcp, &[protocol::VERSION, protocol::METHOD_PASSWORD]).await?;
    let refused_login =
        |why: String| Refusal::new(Reply::NotAllowed, why).answered(protocol::auth_reply(false));
    let (user, key) = match protocol::read_credentials(tcp).await {
        Ok(credentials) => credentials,
        Err(e @ protocol::ReadError::Io(_)) => {
            return Err(Refusal::new(Reply::GeneralFailure, e.to_string()).quiet());
        }
        Err(e) => return Err(refused_login(e.to_string())),
    };
    let (who, dialing) = authenticate(state, &user, key.expose_secret(), peer)
        .await
        .map_err(refused_login)?;
    send(tcp, &protocol::auth_reply(true)).await?;
    let (host, port) = protocol::read_request(tcp)
        .await
        .map_err(Refusal::of_request)?;
    Ok(Request {
        who,
        dialing,
        host,
        port,
    })
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// The key and the username: who dials what. The reason for a refusal
/// never contains the key.
async fn authenticate(
    state: &Shared,
    user: &str,
    key: &str,
    peer: SocketAddr,
) -> Result<(Principal, Dialing), String> {
    let dialing = Dialing::parse(user)?;
    let who = auth::authenticate_key(state, key, peer.to_string())
        .await
        .map_err(|s| format!("password: {}", s.message()))?;
    auth::permit(state, &who, Need::Dial, "SOCKS5 CONNECT")
        .await
        .map_err(|s| s.message().to_owned())?;
    Ok((who, dialing))
}

/// Grants, the connection's target, then the channel.
async fn open(state: &Shared, request: &Request) -> Result<Opened, Refusal> {
    let Request {
        who,
        dialing,
        host,
        port,
    } = request;
    let port = *port;
    let requested = host.to_string();
    check_target(&requested, u32::from(port))
        .map_err(|s| Refusal::new(Reply::GeneralFailure, s.message()))?;
    let (pool, connection) = match dialing {
        Dialing::Pool(pool) => {
            who.may_dial("", pool)
                .map_err(|s| Refusal::new(Reply::NotAllowed, s.message()))?;
            (pool.clone(), String::new())
        }
        Dialing::Connection(name) => {
            who.may_dial(name, "")
                .map_err(|s| Refusal::new(Reply::NotAllowed, s.message()))?;
            let c = state
                .store
                .get_connection(&who.org_id, name)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "reading a connection failed in the store");
                    Refusal::new(Reply::GeneralFailure, "the store cannot be read; retry")
                })?
                .ok_or_else(|| {
                    Refusal::new(
                        Reply::NotAllowed,
                        format!("no connection named {name:?}; list them with `tetherctl connections list`"),
                    )
                })?;
            if !same_host(&c.target_host, host) || c.target_port != port {
                return Err(Refusal::new(
                    Reply::NotAllowed,
                    format!(
                        "connection {name:?} reaches {}:{}, but the client asked for {requested}:{port}; connect to the connection's target or use the pool as the username",
                        c.target_host, c.target_port
                    ),
                ));
            }
            (c.pool, c.name)
        }
    };
    let mut target = Target::new(requested.clone(), port);
    target.connection = connection;
    target.connect_timeout = OPEN_TIMEOUT;
    let (channel, session) = router::open(
        &state.registry,
        &who.org_id,
        &pool,
        target,
        state.config.heartbeat_interval,
        OPEN_TIMEOUT,
    )
    .await
    .map_err(|e| {
        state.metrics.dial_error(&e.reason());
        Refusal::new(route_reply(&e), e.to_string())
    })?;
    Ok(Opened {
        channel,
        pool,
        agent_id: session.agent_id.clone(),
        target: format!("{requested}:{port}"),
    })
}

/// Whether a requested host is a connection's target: the same address
/// however it is spelled, or the same name.
fn same_host(configured: &str, requested: &Host) -> bool {
    let configured_ip = configured
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    match (requested, configured_ip) {
        (Host::Ip(ip), Some(c)) => *ip == c,
        (Host::Name(n), Some(c)) => n.parse::<IpAddr>().is_ok_and(|ip| ip == c),
        (Host::Name(n), None) => n
            .trim_end_matches('.')
            .eq_ignore_ascii_case(configured.trim_end_matches('.')),
        (Host::Ip(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn usernames_name_a_pool_or_a_connection() {
        assert_eq!(Dialing::parse("db-net"), Ok(Dialing::Pool("db-net".into())));
        assert_eq!(
            Dialing::parse("pool:db-net"),
            Ok(Dialing::Pool("db-net".into()))
        );
        assert_eq!(
            Dialing::parse("connection:orders_db"),
            Ok(Dialing::Connection("orders_db".into()))
        );
        let e = Dialing::parse("host:db").unwrap_err();
        assert!(e.contains("connection:NAME") && !e.contains("host"), "{e}");
        let e = Dialing::parse("pool:").unwrap_err();
        assert!(e.contains("not a pool name"), "{e}");
    }

    #[test]
    fn a_username_is_never_repeated_in_an_error() {
        let key = format!("tether-key.v1.{}.{}", "a".repeat(16), "b".repeat(64));
        for user in [
            key.clone(),
            format!("x{key}"),
            format!("pool:{key}"),
            format!("connection:{key}"),
            format!("{key}:x"),
        ] {
            let e = Dialing::parse(&user).unwrap_err();
            assert!(!e.contains(&"b".repeat(64)), "{e}");
        }
        assert!(
            Dialing::parse(&key)
                .unwrap_err()
                .contains("looks like an API key")
        );
    }

    #[test]
    fn a_connection_target_matches_however_its_address_is_spelled() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert!(same_host("127.0.0.1", &ip("127.0.0.1")));
        assert!(same_host("[::1]", &ip("::1")));
        assert!(same_host("::1", &Host::Name("::1".into())));
        assert!(same_host("db.internal", &Host::Name("DB.internal.".into())));
        assert!(!same_host("db.internal", &ip("10.0.0.1")));
        assert!(!same_host("10.0.0.1", &Host::Name("db.internal".into())));
    }
}
