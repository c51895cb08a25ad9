//! Connections: named routes (pool + target), optionally with a gateway
//! TCP listener, scoped to the caller's org.

use std::net::SocketAddr;

use tether::proto::{self, CreateConnectionRequest, ListConnectionsResponse};
use tonic::Status;
use tracing::info;

use super::validate::{check_connection_name, check_pool, check_target};
use crate::{
    auth::Principal,
    state::{Shared, now_ms, store_status},
    store::{ConnectionRecord, StoreError},
};

fn view(state: &Shared, c: ConnectionRecord) -> proto::Connection {
    let address = state
        .gateways
        .address(&c.org_id, &c.name)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let open = state.gateways.open_channels(&c.org_id, &c.name);
    proto::Connection {
        name: c.name,
        org_id: c.org_id,
        pool: c.pool,
        target_host: c.target_host,
        target_port: u32::from(c.target_port),
        gateway_listen: c.gateway_listen,
        gateway_address: address,
        created_unix_ms: c.created_ms,
        open_channels: open,
    }
}

fn gateway_address(state: &Shared, listen: &str) -> Result<Option<SocketAddr>, Status> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "gateway_listen {listen:?} is not ip:port; e.g. 127.0.0.1:15432, or 127.0.0.1:0 for a free port"
        ))
    })?;
    if !addr.ip().is_loopback() && !state.config.gateway_allow_external {
        return Err(Status::invalid_argument(format!(
            "gateway_listen {addr} is not a loopback address; gateways bind 127.0.0.1 unless the control plane \
             runs with gateway_allow_external: true (--gateway-allow-external true)"
        )));
    }
    Ok(Some(addr))
}

pub(super) async fn create(
    state: &Shared,
    who: &Principal,
    r: CreateConnectionRequest,
) -> Result<proto::Connection, Status> {
    check_connection_name(&r.name)?;
    check_pool(&r.pool)?;
    let port = check_target(&r.target_host, r.target_port)?;
    let listen = gateway_address(state, &r.gateway_listen)?;
    let exists = state
        .store
        .get_connection(&who.org_id, &r.name)
        .await
        .map_err(|e| store_status("reading connections", e))?;
    if exists.is_some() {
        return Err(Status::already_exists(format!(
            "a connection named {:?} exists; remove it first (tetherctl connections remove {})",
            r.name, r.name
        )));
    }
    let record = ConnectionRecord {
        org_id: who.org_id.clone(),
        name: r.name.clone(),
        pool: r.pool,
        target_host: r.target_host,
        target_port: port,
        gateway_listen: r.gateway_listen,
        created_ms: now_ms(),
    };
    if let Some(addr) = listen {
        state.gateways.start(state, &record, addr).await.map_err(|e| {
            Status::failed_precondition(format!(
                "cannot open the gateway on {addr}: {e}; pick another port, or 127.0.0.1:0 for a free one"
            ))
        })?;
    }
    if let Err(e) = state.store.insert_connection(&record).await {
        state.gateways.stop(&record.org_id, &record.name);
        return Err(match e {
            StoreError::AlreadyExists => {
                Status::already_exists(format!("a connection named {:?} exists", record.name))
            }
            other => store_status("storing the connection", other),
        });
    }
    info!(key_id = %who.key_id, connection = %record.name, pool = %record.pool, "connection created");
    Ok(view(state, record))
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
) -> Result<ListConnectionsResponse, Status> {
    let connections = state
        .store
        .list_connections(Some(&who.org_id))
        .await
        .map_err(|e| store_status("listing connections", e))?
        .into_iter()
        .map(|c| view(state, c))
        .collect();
    Ok(ListConnectionsResponse { connections })
}

pub(super) async fn delete(state: &Shared, who: &Principal, name: &str) -> Result<(), Status> {
    let removed = state
        .store
        .delete_connection(&who.org_id, name)
        .await
        .map_err(|e| store_status("removing the connection", e))?;
    if !removed {
        return Err(Status::not_found(format!(
            "no connection {name:?}; list them with `tetherctl connections list`"
        )));
    }
    state.gateways.stop(&who.org_id, name);
    info!(key_id = %who.key_id, connection = %name, "connection removed");
    Ok(())
}
