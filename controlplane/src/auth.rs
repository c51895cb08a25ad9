//! API-key authentication of Admin and Dial calls.
//!
//! A key arrives as `authorization: Bearer tether-key.v1.<id>.<secret>`; the
//! store holds the SHA-256 of the secret. The answer never says whether the
//! id exists (no oracle): any bad key is `UNAUTHENTICATED` with the fix.

use secrecy::SecretString;
use tonic::{Request, Status};

use crate::{identity::secrets, store::Store};

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Principal {
    pub key_id: String,
    pub org_id: String,
    pub role: String,
}

/// The org every object belongs to until orgs arrive with the identity
/// work.
pub const DEFAULT_ORG: &str = "default";

/// Checks the request's API key.
pub async fn authenticate<T>(store: &dyn Store, req: &Request<T>) -> Result<Principal, Status> {
    let header = req.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "this call needs an API key: send `authorization: Bearer <key>` (tetherctl reads TETHER_API_KEY or --api-key-file; \
             grpcurl takes -H 'authorization: Bearer <key>')",
        )
    })?;
    let bad = || {
        Status::unauthenticated(
            "the API key is not valid (malformed, unknown or revoked); use the bootstrap key in the control plane's \
             data directory (admin.key) or a key an admin created",
        )
    };
    let text = header.to_str().map_err(|_| bad())?;
    let key = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <API key>`")
        })?;
    let (key_id, secret) =
        secrets::split_api_key(&SecretString::from(key.trim().to_owned())).ok_or_else(bad)?;
    let record = store.get_api_key(&key_id).await.map_err(|e| {
        tracing::error!(error = %e, "looking up an API key failed");
        Status::unavailable("the control plane cannot read its store right now; retry")
    })?;
    let Some(record) = record else {
        return Err(bad());
    };
    use secrecy::ExposeSecret;
    if record.revoked_ms != 0 || !secrets::matches(secret.expose_secret(), &record.secret_hash) {
        return Err(bad());
    }
    Ok(Principal {
        key_id: record.key_id,
        org_id: record.org_id,
        role: record.role,
    })
}
