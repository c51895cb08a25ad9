//! Enrollment tokens: created with a secret shown once, stored as a hash,
//! scoped to the caller's org and a pool.

use secrecy::SecretString;
use tether::{
    join::JoinToken,
    proto::{
        CreateEnrollmentTokenRequest, CreateEnrollmentTokenResponse, EnrollmentToken,
        ListEnrollmentTokensRequest, ListEnrollmentTokensResponse,
    },
};
use tonic::Status;
use tracing::info;

use super::validate::check_pool;
use crate::{
    auth::Principal,
    identity::secrets,
    state::{Shared, now_ms, store_status},
    store::TokenRecord,
};

/// Default token lifetime.
const DEFAULT_TTL_SECONDS: u32 = 86_400;
/// Most uses a token may allow.
const MAX_TOKEN_USES: u32 = 10_000;
/// Most labels on a token.
const MAX_LABELS: usize = 64;

fn view(t: TokenRecord) -> EnrollmentToken {
    EnrollmentToken {
        token_id: t.token_id,
        org_id: t.org_id,
        pool: t.pool,
        created_unix_ms: t.created_ms,
        expires_unix_ms: t.expires_ms,
        max_uses: t.max_uses,
        uses: t.uses,
        last_used_unix_ms: t.last_used_ms,
        revoked_unix_ms: t.revoked_ms,
        labels: t.labels.into_iter().collect(),
        description: t.description,
    }
}

pub(super) async fn create(
    state: &Shared,
    who: &Principal,
    r: CreateEnrollmentTokenRequest,
) -> Result<CreateEnrollmentTokenResponse, Status> {
    check_pool(&r.pool)?;
    if r.max_uses > MAX_TOKEN_USES {
        return Err(Status::invalid_argument(format!(
            "max_uses must be at most {MAX_TOKEN_USES}"
        )));
    }
    if r.labels.len() > MAX_LABELS || r.description.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LABELS} labels and a description of at most 256 bytes"
        )));
    }
    let ttl = if r.ttl_seconds == 0 {
        DEFAULT_TTL_SECONDS
    } else {
        r.ttl_seconds
    };
    let now = now_ms();
    let token_id = secrets::random_hex(8);
    let secret = secrets::random_hex(32);
    let record = TokenRecord {
        token_id: token_id.clone(),
        org_id: who.org_id.clone(),
        pool: r.pool.clone(),
        secret_hash: secrets::hash(&secret),
        created_ms: now,
        expires_ms: now.saturating_add(i64::from(ttl) * 1000),
        max_uses: r.max_uses.max(1),
        uses: 0,
        last_used_ms: 0,
        revoked_ms: 0,
        labels: r.labels.into_iter().collect(),
        description: r.description,
    };
    state
        .store
        .insert_token(&record)
        .await
        .map_err(|e| store_status("storing the token", e))?;
    let join = JoinToken {
        token_id: token_id.clone(),
        secret: SecretString::from(secret),
        pin: state.authority.pin,
    };
    info!(key_id = %who.key_id, %token_id, pool = %record.pool, "enrollment token created");
    Ok(CreateEnrollmentTokenResponse {
        token: Some(view(record)),
        join_token: join.expose(),
    })
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
    r: ListEnrollmentTokensRequest,
) -> Result<ListEnrollmentTokensResponse, Status> {
    let now = now_ms();
    let tokens = state
        .store
        .list_tokens(&who.org_id)
        .await
        .map_err(|e| store_status("listing tokens", e))?
        .into_iter()
        .filter(|t| r.pool.is_empty() || t.pool == r.pool)
        .filter(|t| r.include_inactive || t.is_usable(now))
        .map(view)
        .collect();
    Ok(ListEnrollmentTokensResponse { tokens })
}

pub(super) async fn revoke(
    state: &Shared,
    who: &Principal,
    id: &str,
) -> Result<EnrollmentToken, Status> {
    let t = state
        .store
        .revoke_token(&who.org_id, id, now_ms())
        .await
        .map_err(|e| store_status("revoking the token", e))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no token {id:?}; list them with `tetherctl tokens list --all`"
            ))
        })?;
    info!(key_id = %who.key_id, token_id = %id, "enrollment token revoked");
    Ok(view(t))
}
