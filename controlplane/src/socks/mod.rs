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

use std::{net::SocketAddr, time::Duration};

use secrecy::ExposeSecret;
use tether::proto::ResetCode;
use tether_tunnel::Target;
use tokio::{
    io::AsyncWriteExt,
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
    fn parse(user: &str) -> Result<Self, String> {
        let (kind, name) = match user.split_once(':') {
            Some(("pool", name)) => ("pool", name),
            Some(("connection", name)) => ("connection", name),
            Some((other, _)) => {
                return Err(format!(
                    "username prefix {other:?} is not known: use POOL, pool:POOL or connection:NAME"
                ));
            }
            None => ("pool", user),
        };
        if kind == "pool" {
            check_pool(name).map_err(|s| s.message().to_owned())?;
            Ok(Dialing::Pool(name.to_owned()))
        } else {
            check_connection_name(name).map_err(|s| s.message().to_owned())?;
            Ok(Dialing::Connection(name.to_owned()))
        }
    }
}

/// A refusal: the reply code and the reason for the log.
struct Refusal {
    reply: Reply,
    why: String,
}

impl Refusal {
    fn new(reply: Reply, why: impl Into<String>) -> Self {
        Self {
            reply,
            why: why.into(),
        }
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
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accepting a SOCKS5 client failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let span = info_span!("socks", client = %peer);
        state
            .tracker
            .spawn(client(state.clone(), tcp, peer).instrument(span));
    }
    debug!("SOCKS5 front stopped");
}

/// One client: handshake, then the splice.
async fn client(state: Shared, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let opened = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&state, &mut tcp, peer))
        .await
    {
        Ok(Ok(opened)) => opened,
        Ok(Err(Refusal { reply, why })) => {
            state.metrics.socks_request(reply.as_str());
            warn!(reply = reply.as_str(), reason = %why, "SOCKS5 request refused");
            return;
        }
        Err(_) => {
            state.metrics.socks_request("handshake_timeout");
            warn!("SOCKS5 client sent no complete request within {HANDSHAKE_TIMEOUT:?}; closed");
            return;
        }
    };
    let Opened {
        mut channel,
        pool,
        agent_id,
        target,
    } = opened;
    state.metrics.socks_request(Reply::Succeeded.as_str());
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

/// A channel ready for the splice.
struct Opened {
    channel: tether_tunnel::driver::Channel<tether_tunnel::ServerWire>,
    pool: String,
    agent_id: String,
    target: String,
}

/// Writes `bytes`; a client that went away is a refusal nobody hears.
async fn send(tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), Refusal> {
    tcp.write_all(bytes)
        .await
        .map_err(|e| Refusal::new(Reply::GeneralFailure, format!("the client went away: {e}")))
}

/// Method selection, authentication and the request, each answered; on
/// success the channel is open and the success reply sent.
async fn handshake(
    state: &Shared,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Opened, Refusal> {
    let protocol_error = |e: protocol::ReadError| Refusal::new(e.reply(), e.to_string());
    let methods = protocol::read_greeting(tcp).await.map_err(protocol_error)?;
    if !methods.contains(&protocol::METHOD_PASSWORD) {
        send(tcp, &[protocol::VERSION, protocol::NO_ACCEPTABLE_METHOD]).await?;
        return Err(Refusal::new(
            Reply::NotAllowed,
            "the client offered no username/password authentication; give the pool (or connection:NAME) as the username and an API key as the password",
        ));
    }
    send(tcp, &[protocol::VERSION, protocol::METHOD_PASSWORD]).await?;
    let (user, key) = protocol::read_credentials(tcp)
        .await
        .map_err(protocol_error)?;
    let who = match authenticate(state, &user, key.expose_secret(), peer).await {
        Ok(pair) => pair,
        Err(why) => {
            send(tcp, &protocol::auth_reply(false)).await?;
            return Err(Refusal::new(Reply::NotAllowed, why));
        }
    };
    let (who, dialing) = who;
    send(tcp, &protocol::auth_reply(true)).await?;

    let (host, port) = match protocol::read_request(tcp).await {
        Ok(dest) => dest,
        Err(e) => {
            let refusal = protocol_error(e);
            send(tcp, &protocol::reply(refusal.reply, unspecified())).await?;
            return Err(refusal);
        }
    };
    match open(state, &who, &dialing, &host, port).await {
        Ok(opened) => {
            let bound = tcp.local_addr().unwrap_or_else(|_| unspecified());
            send(tcp, &protocol::reply(Reply::Succeeded, bound)).await?;
            Ok(opened)
        }
        Err(refusal) => {
            send(tcp, &protocol::reply(refusal.reply, unspecified())).await?;
            Err(refusal)
        }
    }
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
async fn open(
    state: &Shared,
    who: &Principal,
    dialing: &Dialing,
    host: &Host,
    port: u16,
) -> Result<Opened, Refusal> {
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
            if !c.target_host.eq_ignore_ascii_case(&requested) || c.target_port != port {
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
        assert!(e.contains("connection:NAME"), "{e}");
        let e = Dialing::parse("pool:").unwrap_err();
        assert!(e.contains("not a valid name"), "{e}");
    }
}
