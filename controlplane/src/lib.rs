//! The Tether control plane.
//!
//! Agents dial in over one gRPC stream each (`Tunnel.Attach`, mTLS); the
//! control plane enrolls them (`Enrollment`), keeps their sessions in a
//! registry, and routes channels to them for the connector runtime
//! (`Dial.Open`) and for gateway TCP ports. Operators use `Admin` (with an
//! API key), the ops HTTP port (`/healthz`, `/readyz`, `/metrics`), server
//! reflection and gRPC health.
//!
//! [`run`] starts everything from a validated [`Config`] and returns after a
//! graceful shutdown: stop admitting, tell agents to go away, wait for open
//! channels up to the drain timeout, end the sessions, stop the listeners.

pub mod accept;
pub mod audit;
pub mod auth;
pub mod commands;
pub mod config;
pub mod events;
pub mod gateway;
pub mod grpc_server;
pub mod heartbeats;
pub mod identity;
pub mod jobs;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod router;
pub mod services;
pub mod socks;
pub mod splice;
pub mod state;
pub mod store;
pub mod tls;
pub mod watcher;
pub mod webhook;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use secrecy::ExposeSecret;
use tether::proto::{
    GoAway, admin_server::AdminServer, dial_server::DialServer,
    enrollment_server::EnrollmentServer, server_frame, tunnel_server::TunnelServer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tracing::{error, info, warn};

pub use crate::config::Config;
use crate::{
    auth::DEFAULT_ORG,
    config::StoreSetting,
    gateway::Gateways,
    identity::{Authority, ca::write_private, secrets},
    metrics::Metrics,
    registry::Registry,
    services::{
        admin::AdminService, dial::DialService, enrollment::EnrollmentService,
        tunnel::TunnelService,
    },
    state::{Shared, State, now_ms},
    store::{ApiKeyRecord, SqlStore, Store},
};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error(
        "cannot create the data directory {path}: {source}; check --data-dir and its permissions"
    )]
    DataDir {
        /// The directory.
        path: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] store::StoreError),
    /// PostgreSQL could not be reached or migrated.
    #[error(
        "cannot open the PostgreSQL store: {0}; check the store URL (host, port, database, user, password, \
         sslmode) and that PostgreSQL accepts connections from this host"
    )]
    Postgres(String),
    /// The CA or server certificate could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] identity::CaError),
    /// A listener could not bind.
    #[error(
        "cannot listen on {addr} ({what}): {source}; is another process using the port? change --{flag}"
    )]
    Bind {
        /// What it is for.
        what: &'static str,
        /// The flag that sets it.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("invalid TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The supplied bootstrap API key cannot be used.
    #[error("cannot use the bootstrap API key file {path}: {why}")]
    BootstrapKey {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Reflection could not be built.
    #[error("cannot build server reflection: {0}")]
    Reflection(String),
}

/// Bound addresses, reported once the control plane serves.
#[derive(Clone, Debug)]
pub struct Ready {
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
    /// The SOCKS5 front, when configured.
    pub socks: Option<SocketAddr>,
    pub public_endpoint: String,
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what,
            flag,
            addr,
            source,
        })
}

fn create_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)
}

/// Creates the bootstrap admin key when the store has no key at all: the
/// supplied one, or a new one.
async fn bootstrap_key(
    store: &dyn Store,
    data_dir: &Path,
    supplied: Option<&Path>,
) -> Result<(), StartError> {
    if store.count_api_keys().await? > 0 {
        return Ok(());
    }
    let key = match supplied {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| StartError::BootstrapKey {
                    path: path.display().to_string(),
                    why: source.to_string(),
                })?;
            secrecy::SecretString::from(text.trim().to_owned())
        }
        None => secrets::new_api_key().1,
    };
    let Some((key_id, secret)) = secrets::split_api_key(&key) else {
        return Err(StartError::BootstrapKey {
            path: supplied
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            why:
                "it does not hold a Tether API key (tether-key.v1.<16 hex digits>.<64 hex digits>)"
                    .into(),
        });
    };
    store
        .insert_api_key(&ApiKeyRecord {
            key_id: key_id.clone(),
            org_id: DEFAULT_ORG.into(),
            role: "admin".into(),
            secret_hash: secrets::hash(secret.expose_secret()),
            created_ms: now_ms(),
            description: "bootstrap admin key".into(),
            ..ApiKeyRecord::default()
        })
        .await?;
    let path = data_dir.join("admin.key");
    write_private(
        &path,
        format!("{}\n", key.expose_secret()).as_bytes(),
        "admin key",
    )?;
    info!(%key_id, path = %path.display(), "created the bootstrap admin key (mode 0600); tetherctl uses it with --data-dir");
    Ok(())
}

fn public_endpoint(config: &Config, grpc: SocketAddr) -> String {
    if let Some(e) = &config.public_endpoint {
        return e.clone();
    }
    let host = config.tls_names.first().map_or("localhost", String::as_str);
    if host.contains(':') {
        format!("https://[{host}]:{}", grpc.port())
    } else {
        format!("https://{host}:{}", grpc.port())
    }
}

/// Runs the control plane until `cancel` fires, then shuts down gracefully.
/// `on_ready` is called once every listener serves.
pub async fn run(
    config: Config,
    cancel: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), StartError> {
    create_data_dir(&config.data_dir)?;
    let store: Arc<dyn Store> = match &config.store {
        StoreSetting::Sqlite => {
            Arc::new(SqlStore::open_sqlite(&config.data_dir.join("tether.db")).await?)
        }
        StoreSetting::Postgres(url) => {
            use secrecy::ExposeSecret;
            Arc::new(
                SqlStore::open_postgres(url.expose_secret())
                    .await
                    .map_err(|e| StartError::Postgres(e.to_string()))?,
            )
        }
    };
    let authority = Authority::load(
        &config.data_dir,
        config.ca_files.as_ref(),
        config.tls_files.as_ref(),
        &config.tls_names,
    )?;
    if config.ca_files.is_some() {
        // tetherctl on this host finds the CA in the data directory.
        let _ = std::fs::write(config.data_dir.join("ca.pem"), &authority.ca_pem);
    }
    bootstrap_key(
        store.as_ref(),
        &config.data_dir,
        config.bootstrap_api_key_file.as_deref(),
    )
    .await?;

    let grpc_listener = bind(config.listen, "gRPC", "listen").await?;
    let ops_listener = bind(config.ops_listen, "ops HTTP", "ops-listen").await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "gRPC",
            flag: "listen",
            addr: config.listen,
            source,
        })?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "ops HTTP",
            flag: "ops-listen",
            addr: config.ops_listen,
            source,
        })?;
    let socks_listener = match config.socks_listen {
        None => None,
        // Bound like a gateway port: clients arrive in bursts.
        Some(addr) => Some(accept::listen(addr).map_err(|source| StartError::Bind {
            what: "SOCKS5",
            flag: "socks-listen",
            addr,
            source,
        })?),
    };
    let socks_addr = socks_listener.as_ref().and_then(|l| l.local_addr().ok());
    let tls_config = Arc::new(tls::server_config(&authority)?);

    let tracker = TaskTracker::new();
    let (events, webhook_queue) = events::Events::new(config.alert_webhook.is_some());
    let (heartbeat_recorder, heartbeat_queue) = heartbeats::Recorder::new();
    let state: Shared = Arc::new(State {
        public_endpoint: public_endpoint(&config, grpc_addr),
        config,
        store,
        authority,
        registry: Registry::default(),
        metrics: Metrics::new(),
        gateways: Gateways::default(),
        events,
        jobs: jobs::Jobs::default(),
        heartbeats: heartbeat_recorder,
        replica_id: format!("r-{}", secrets::random_hex(4)),
        // Not a child of `cancel`: sessions and gateways must outlive the
        // signal until shutdown() has drained them.
        cancel: CancellationToken::new(),
        tracker: tracker.clone(),
        serving: false.into(),
    });
    start_gateways(&state).await;
    if let Some(listener) = socks_listener {
        tracker.spawn(socks::serve(
            state.clone(),
            listener,
            state.gateways.front_stop(),
        ));
    }
    tracker.spawn(watcher::run(state.clone()));
    tracker.spawn(heartbeats::run(state.clone(), heartbeat_queue));
    tracker.spawn(jobs::dispatch::run(state.clone()));
    tracker.spawn(jobs::sweep::run(state.clone()));
    if let StoreSetting::Postgres(url) = &state.config.store {
        tracker.spawn(jobs::listen::run(state.clone(), url.clone()));
    }
    if let (Some(hook), Some(queue)) = (state.config.alert_webhook.clone(), webhook_queue) {
        tracker.spawn(webhook::run(
            hook,
            queue,
            state.metrics.clone(),
            state.cancel.clone(),
        ));
    }

    // gRPC: accept loop → tonic, stopped separately after the sessions end.
    let accept_cancel = CancellationToken::new();
    let incoming = tls::accept_loop(
        grpc_listener,
        tls_config,
        state.metrics.clone(),
        accept_cancel.clone(),
        tracker.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tether::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions, so that grpcurl of every age can list and describe.
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let server_stop = CancellationToken::new();
    let routes = Routes::new(
        TunnelServer::new(TunnelService::new(state.clone()))
            .max_decoding_message_size(services::tunnel::MAX_MESSAGE),
    )
    .add_service(EnrollmentServer::new(EnrollmentService::new(state.clone())))
    .add_service(AdminServer::new(AdminService::new(state.clone())))
    .add_service(
        DialServer::new(DialService::new(state.clone()))
            .max_decoding_message_size(services::dial::MAX_MESSAGE),
    )
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha)
    .prepare();
    let server = grpc_server::serve(
        routes,
        incoming,
        grpc_server::Settings {
            keepalive: tether::client::KEEPALIVE,
            stream_window: tether::client::STREAM_WINDOW,
            connection_window: tether::client::CONNECTION_WINDOW,
            max_concurrent_streams: state.config.max_concurrent_streams,
        },
        server_stop.clone(),
    );
    let server_task = tokio::spawn(server);
    let ops_cancel = CancellationToken::new();
    let ops_task = tokio::spawn(ops::serve(ops_listener, state.clone(), ops_cancel.clone()));

    state.serving.store(true, Ordering::Relaxed);
    let ready = Ready {
        grpc: grpc_addr,
        ops: ops_addr,
        socks: socks_addr,
        public_endpoint: state.public_endpoint.clone(),
    };
    info!(
        grpc = %ready.grpc,
        ops = %ready.ops,
        socks = %ready.socks.map(|a| a.to_string()).unwrap_or_default(),
        public_endpoint = %ready.public_endpoint,
        ca_pin = %state.authority.pin,
        data_dir = %state.config.data_dir.display(),
        replica_id = %state.replica_id,
        "control plane ready"
    );
    on_ready(&ready);

    cancel.cancelled().await;
    shutdown(&state, &health).await;
    accept_cancel.cancel();
    server_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the gRPC server task failed"),
        Err(_) => warn!("the gRPC server did not stop within 5 s; exiting anyway"),
    }
    ops_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), ops_task).await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not finish within 5 s of shutdown");
    }
    info!("control plane stopped");
    Ok(())
}

async fn start_gateways(state: &Shared) {
    let connections = match state.store.list_connections(None).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot read connections; no gateway listeners started");
            return;
        }
    };
    for c in connections
        .into_iter()
        .filter(|c| !c.gateway_listen.is_empty())
    {
        let addr: SocketAddr = match c.gateway_listen.parse() {
            Ok(a) => a,
            Err(_) => {
                error!(connection = %c.name, listen = %c.gateway_listen, "stored gateway address is not ip:port; recreate the connection");
                continue;
            }
        };
        if let Err(e) = state.gateways.start(state, &c, addr).await {
            error!(connection = %c.name, %addr, error = %e, "gateway cannot listen; free the port or recreate the connection with another");
        }
    }
}

/// Stop admitting, tell agents to go away, give open channels up to the
/// drain timeout, then end every session.
async fn shutdown(state: &Shared, health: &tonic_health::server::HealthReporter) {
    info!("shutting down: draining sessions");
    state.serving.store(false, Ordering::Relaxed);
    state.gateways.stop_all();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let drain = state.config.drain_timeout;
    let deadline_ms = now_ms().saturating_add(i64::try_from(drain.as_millis()).unwrap_or(i64::MAX));
    let sessions = state.registry.all();
    for s in &sessions {
        // Spread reconnects over 0-2 s so that agents do not arrive at once.
        let jitter = u32::from(secrets::random_bytes::<2>()[0]) * 8;
        let _ = s
            .connection
            .send_control(server_frame::Kind::GoAway(GoAway {
                reason: "control plane shutting down".into(),
                reconnect_after_ms: jitter,
                deadline_unix_ms: deadline_ms,
            }));
    }
    let wait = async {
        // Bounded: at most drain / 100 ms checks.
        while state
            .registry
            .all()
            .iter()
            .any(|s| s.connection.channel_count() > 0)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(drain, wait).await.is_err() {
        warn!(timeout = ?drain, "channels still open at the drain deadline; resetting them");
    }
    for s in state.registry.all() {
        s.connection.close("control plane shutting down");
        s.cancel.cancel();
    }
    state.cancel.cancel();
}
