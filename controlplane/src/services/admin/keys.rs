//! API keys and the audit log.

use secrecy::ExposeSecret;
use tether::proto::{
    self, AuditEvent, CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest,
    ListApiKeysResponse, ListAuditEventsRequest, ListAuditEventsResponse,
};
use tonic::Status;
use tracing::info;

use super::validate::{check_connection_name, check_org, check_pool};
use crate::{
    auth::{DEFAULT_ORG, Principal, Role},
    identity::secrets,
    state::{Shared, now_ms, store_status},
    store::ApiKeyRecord,
};

/// Most grants on one dialer key.
const MAX_GRANTS: usize = 256;

fn view(k: ApiKeyRecord) -> proto::ApiKey {
    proto::ApiKey {
        key_id: k.key_id,
        org_id: k.org_id,
        role: Role::parse(&k.role).map_or(proto::Role::Unspecified, Role::to_proto) as i32,
        connections: k.connections,
        pools: k.pools,
        description: k.description,
        created_unix_ms: k.created_ms,
        revoked_unix_ms: k.revoked_ms,
        last_used_unix_ms: k.last_used_ms,
    }
}

pub(super) async fn create(
    state: &Shared,
    who: &Principal,
    r: CreateApiKeyRequest,
) -> Result<CreateApiKeyResponse, Status> {
    let role = Role::from_proto(r.role).ok_or_else(|| {
        Status::invalid_argument("give the key a role: admin, operator, viewer or dialer")
    })?;
    let org = if r.org_id.is_empty() {
        who.org_id.clone()
    } else {
        r.org_id.clone()
    };
    check_org(&org)?;
    if org != who.org_id && who.org_id != DEFAULT_ORG {
        return Err(Status::permission_denied(format!(
            "a key of org {:?} can create keys only for its own org",
            who.org_id
        )));
    }
    if role != Role::Dialer && (!r.connections.is_empty() || !r.pools.is_empty()) {
        return Err(Status::invalid_argument(
            "connection and pool grants are for dialer keys; other roles reach everything their role allows",
        ));
    }
    if role == Role::Dialer && r.connections.is_empty() && r.pools.is_empty() {
        return Err(Status::invalid_argument(
            "a dialer key needs at least one grant: --connection NAME or --pool NAME",
        ));
    }
    if r.connections.len() + r.pools.len() > MAX_GRANTS || r.description.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_GRANTS} grants and a description of at most 256 bytes"
        )));
    }
    for c in &r.connections {
        check_connection_name(c)?;
    }
    for p in &r.pools {
        check_pool(p)?;
    }
    let (key_id, key) = secrets::new_api_key();
    let (_, secret) = secrets::split_api_key(&key).expect("a freshly made key has the key shape");
    let record = ApiKeyRecord {
        key_id: key_id.clone(),
        org_id: org,
        role: role.as_str().into(),
        secret_hash: secrets::hash(secret.expose_secret()),
        created_ms: now_ms(),
        description: r.description,
        revoked_ms: 0,
        connections: r.connections,
        pools: r.pools,
        last_used_ms: 0,
    };
    state
        .store
        .insert_api_key(&record)
        .await
        .map_err(|e| store_status("storing the key", e))?;
    info!(key_id = %who.key_id, new_key_id = %key_id, org_id = %record.org_id, role = role.as_str(), "API key created");
    Ok(CreateApiKeyResponse {
        key: Some(view(record)),
        api_key: key.expose_secret().to_owned(),
    })
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
    r: ListApiKeysRequest,
) -> Result<ListApiKeysResponse, Status> {
    let keys = state
        .store
        .list_api_keys(&who.org_id)
        .await
        .map_err(|e| store_status("listing keys", e))?
        .into_iter()
        .filter(|k| r.include_revoked || k.revoked_ms == 0)
        .map(view)
        .collect();
    Ok(ListApiKeysResponse { keys })
}

pub(super) async fn revoke(
    state: &Shared,
    who: &Principal,
    id: &str,
) -> Result<proto::ApiKey, Status> {
    let k = state
        .store
        .revoke_api_key(&who.org_id, id, now_ms())
        .await
        .map_err(|e| store_status("revoking the key", e))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no key {id:?}; list them with `tetherctl keys list --all`"
            ))
        })?;
    info!(key_id = %who.key_id, revoked_key_id = %id, "API key revoked");
    Ok(view(k))
}

pub(super) async fn audit(
    state: &Shared,
    who: &Principal,
    r: ListAuditEventsRequest,
) -> Result<ListAuditEventsResponse, Status> {
    let limit = match r.limit {
        0 => 100,
        n => n.min(1000),
    };
    let before = if r.before_unix_ms <= 0 {
        i64::MAX
    } else {
        r.before_unix_ms
    };
    let events = state
        .store
        .list_audit(&who.org_id, before, limit)
        .await
        .map_err(|e| store_status("reading the audit log", e))?
        .into_iter()
        .map(|e| AuditEvent {
            time_unix_ms: e.time_ms,
            key_id: e.key_id,
            role: Role::parse(&e.role).map_or(proto::Role::Unspecified, Role::to_proto) as i32,
            action: e.action,
            target: e.target,
            peer_address: e.peer,
            result: e.result,
            detail: e.detail,
        })
        .collect();
    Ok(ListAuditEventsResponse { events })
}
