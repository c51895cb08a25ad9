//! Gateway listeners: a plain TCP port per connection that clients (psql, a
//! JDBC URL, the MariaDB client) connect to as if it were the target. Each
//! accepted socket is spliced through a channel to an agent of the pool.
//!
//! A TCP client cannot be told why a channel failed, so failures are logged
//! with the reason, counted in `tether_dial_errors_total`, and the socket is
//! aborted (RST) rather than closed: a database driver then reports a broken
//! connection, never a clean end that could pass for a complete result.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tether_tunnel::Target;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    router,
    splice::{self, Failed},
    state::Shared,
    store::ConnectionRecord,
};

/// How long a gateway client waits for its channel to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

struct Listener {
    address: SocketAddr,
    cancel: CancellationToken,
    open: Arc<std::sync::atomic::AtomicU32>,
}

/// The running gateway listeners, by (org, connection name).
#[derive(Default)]
pub struct Gateways {
    listeners: Mutex<HashMap<(String, String), Listener>>,
    /// Stops the other client listener, the SOCKS5 front, with the gateways.
    front: CancellationToken,
}

impl std::fmt::Debug for Gateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateways")
    }
}

impl Gateways {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Listener>> {
        self.listeners
            .lock()
            .expect("gateway lock poisoned: a task panicked while holding it")
    }

    /// Binds `addr` and serves the connection on it; returns the bound
    /// address (the port resolved when `addr` asked for port 0).
    pub async fn start(
        &self,
        state: &Shared,
        conn: &ConnectionRecord,
        addr: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        let listener = crate::accept::listen(addr)?;
        let address = listener.local_addr()?;
        let cancel = state.cancel.child_token();
        let open = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let key = (conn.org_id.clone(), conn.name.clone());
        if let Some(old) = self.map().insert(
            key,
            Listener {
                address,
                cancel: cancel.clone(),
                open: open.clone(),
            },
        ) {
            old.cancel.cancel();
        }
        let span = info_span!("gateway", connection = %conn.name, pool = %conn.pool, %address);
        state
            .tracker
            .spawn(serve(state.clone(), conn.clone(), listener, cancel, open).instrument(span));
        info!(connection = %conn.name, %address, target = %format!("{}:{}", conn.target_host, conn.target_port), "gateway listening");
        Ok(address)
    }

    /// Stops a connection's listener (open channels finish on their own).
    pub fn stop(&self, org_id: &str, name: &str) {
        if let Some(l) = self.map().remove(&(org_id.to_owned(), name.to_owned())) {
            l.cancel.cancel();
        }
    }

    /// Stops every listener (shutdown: admit no new clients).
    pub fn stop_all(&self) {
        for (_, l) in self.map().drain() {
            l.cancel.cancel();
        }
        self.front.cancel();
    }

    /// Fires when [`Gateways::stop_all`] runs: the SOCKS5 front stops too.
    pub fn front_stop(&self) -> CancellationToken {
        self.front.clone()
    }

    /// Where a connection's gateway listens, if it runs.
    pub fn address(&self, org_id: &str, name: &str) -> Option<SocketAddr> {
        self.map()
            .get(&(org_id.to_owned(), name.to_owned()))
            .map(|l| l.address)
    }

    /// Channels open through a connection's gateway.
    pub fn open_channels(&self, org_id: &str, name: &str) -> u32 {
        self.map()
            .get(&(org_id.to_owned(), name.to_owned()))
            .map_or(0, |l| l.open.load(std::sync::atomic::Ordering::Relaxed))
    }
}

async fn serve(
    state: Shared,
    conn: ConnectionRecord,
    listener: TcpListener,
    cancel: CancellationToken,
    open: Arc<std::sync::atomic::AtomicU32>,
) {
    let tracker = state.tracker.clone();
    crate::accept::accept_each(
        listener,
        cancel,
        tracker,
        "a gateway client",
        |tcp, peer| {
            let span = info_span!("channel", client = %peer, target_host = %conn.target_host);
            client(state.clone(), conn.clone(), tcp, open.clone()).instrument(span)
        },
    )
    .await;
    debug!("gateway stopped");
}

/// Aborts a client socket (RST), so the client sees a broken connection.
fn abort(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn client(
    state: Shared,
    conn: ConnectionRecord,
    mut tcp: TcpStream,
    open: Arc<std::sync::atomic::AtomicU32>,
) {
    let _ = tcp.set_nodelay(true);
    let mut target = Target::new(conn.target_host.clone(), conn.target_port);
    target.connection = conn.name.clone();
    let routed = router::open(
        &state.registry,
        &conn.org_id,
        &conn.pool,
        target,
        state.config.heartbeat_interval,
        OPEN_TIMEOUT,
    )
    .await;
    let (mut channel, session) = match routed {
        Ok(pair) => pair,
        Err(e) => {
            state.metrics.dial_error(&e.reason());
            warn!(error = %e, "gateway client refused");
            abort(tcp);
            return;
        }
    };
    let metrics = state.metrics.channel_opened(&conn.pool, "gateway");
    open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    debug!(agent_id = %session.agent_id, channel_id = %channel.id(), "gateway channel open");
    match splice::run_tcp(&mut channel, &mut tcp, &metrics).await {
        Ok(()) => {}
        Err(Failed::Client(e)) => debug!(error = %e, "gateway client went away"),
        Err(Failed::Channel(reset)) => {
            warn!(code = ?reset.code, reason = %reset.message, "channel reset; aborting the client connection");
            abort(tcp);
        }
    }
    open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}
