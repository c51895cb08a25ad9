//! API keys: who is calling, and whether their role allows the call.
//!
//! A key arrives as `authorization: Bearer tether-key.v1.<id>.<secret>`; the
//! store holds the SHA-256 of the secret, compared in constant time. A bad
//! key is `UNAUTHENTICATED` without saying whether the id exists; a good key
//! with the wrong role is `PERMISSION_DENIED` naming the roles that would do.
//! Every call is scoped to the key's org.

use secrecy::{ExposeSecret, SecretString};
use tether::proto;
use tonic::{Request, Status};

use crate::{
    audit,
    identity::secrets,
    state::{State, now_ms},
};

/// The org of the bootstrap key: the operator's own. Its admins may create
/// keys for other orgs (which creates those orgs); every other call stays in
/// the caller's org.
pub const DEFAULT_ORG: &str = "default";

/// How often a key's last use is written to the store, at most.
const TOUCH_EVERY_MS: i64 = 60_000;

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in its org, including keys and the audit log.
    Admin,
    /// Agents, pools, tokens, connections, jobs, dialing.
    Operator,
    /// Lists and gets.
    Viewer,
    /// Dialing the connections and pools it is granted.
    Dialer,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Dialer => "dialer",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "dialer" => Some(Role::Dialer),
            _ => None,
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> proto::Role {
        match self {
            Role::Admin => proto::Role::Admin,
            Role::Operator => proto::Role::Operator,
            Role::Viewer => proto::Role::Viewer,
            Role::Dialer => proto::Role::Dialer,
        }
    }

    /// From the wire enum.
    pub fn from_proto(r: i32) -> Option<Self> {
        match proto::Role::try_from(r).ok()? {
            proto::Role::Admin => Some(Role::Admin),
            proto::Role::Operator => Some(Role::Operator),
            proto::Role::Viewer => Some(Role::Viewer),
            proto::Role::Dialer => Some(Role::Dialer),
            proto::Role::Unspecified => None,
        }
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading: viewer, operator or admin.
    Read,
    /// Changing agents, tokens, connections, jobs: operator or admin.
    Operate,
    /// Keys and the audit log: admin.
    Admin,
    /// Opening a stream through an agent: dialer (if granted), operator or
    /// admin.
    Dial,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => matches!(role, Role::Admin | Role::Operator | Role::Viewer),
            Need::Operate => matches!(role, Role::Admin | Role::Operator),
            Need::Admin => role == Role::Admin,
            Need::Dial => matches!(role, Role::Admin | Role::Operator | Role::Dialer),
        }
    }

    fn roles(self) -> &'static str {
        match self {
            Need::Read => "viewer, operator or admin",
            Need::Operate => "operator or admin",
            Need::Admin => "admin",
            Need::Dial => "dialer, operator or admin",
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Principal {
    pub key_id: String,
    pub org_id: String,
    pub role: Role,
    /// Connections a dialer may dial.
    pub connections: Vec<String>,
    /// Pools a dialer may dial.
    pub pools: Vec<String>,
    /// The caller's address, for the audit log.
    pub peer: String,
}

impl Principal {
    /// Whether this key may dial `connection` (by name) or, with an empty
    /// name, any target of `pool`.
    pub fn may_dial(&self, connection: &str, pool: &str) -> Result<(), Status> {
        if self.role != Role::Dialer {
            return Ok(());
        }
        let granted = if connection.is_empty() {
            self.pools.iter().any(|p| p == pool)
        } else {
            self.connections.iter().any(|c| c == connection)
        };
        if granted {
            return Ok(());
        }
        let what = if connection.is_empty() {
            format!("pool {pool:?}")
        } else {
            format!("connection {connection:?}")
        };
        Err(Status::permission_denied(format!(
            "this dialer key may not dial {what} (it is granted connections {:?} and pools {:?}); \
             ask an admin for a key with that grant",
            self.connections, self.pools
        )))
    }
}

/// A key that is malformed, unknown or revoked: the caller is not told which.
fn invalid_key() -> Status {
    Status::unauthenticated(
        "the API key is not valid (malformed, unknown or revoked); use the bootstrap key in the control plane's \
         data directory (admin.key) or a key an admin created",
    )
}

/// Checks the request's API key.
pub async fn authenticate<T>(state: &State, req: &Request<T>) -> Result<Principal, Status> {
    let header = req.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "this call needs an API key: send `authorization: Bearer <key>` (tetherctl reads TETHER_API_KEY or --api-key-file; \
             grpcurl takes -H 'authorization: Bearer <key>')",
        )
    })?;
    let text = header.to_str().map_err(|_| invalid_key())?;
    let key = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <API key>`")
        })?;
    authenticate_key(
        state,
        key.trim(),
        req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
    )
    .await
}

/// Checks an API key given outside gRPC metadata (the SOCKS5 front's
/// password); `peer` is the caller's address for the audit log.
pub async fn authenticate_key(state: &State, key: &str, peer: String) -> Result<Principal, Status> {
    let (key_id, secret) =
        secrets::split_api_key(&SecretString::from(key.to_owned())).ok_or_else(invalid_key)?;
    let record = state.store.get_api_key(&key_id).await.map_err(|e| {
        tracing::error!(error = %e, "looking up an API key failed");
        Status::unavailable("the control plane cannot read its store right now; retry")
    })?;
    let Some(record) = record else {
        return Err(invalid_key());
    };
    if record.revoked_ms != 0 || !secrets::matches(secret.expose_secret(), &record.secret_hash) {
        return Err(invalid_key());
    }
    let role = Role::parse(&record.role).ok_or_else(|| {
        tracing::error!(key_id = %record.key_id, role = %record.role, "stored key has an unknown role");
        invalid_key()
    })?;
    let now = now_ms();
    if now - record.last_used_ms > TOUCH_EVERY_MS
        && let Err(e) = state.store.touch_api_key(&record.key_id, now).await
    {
        tracing::warn!(error = %e, "could not record an API key's use");
    }
    Ok(Principal {
        key_id: record.key_id,
        org_id: record.org_id,
        role,
        connections: record.connections,
        pools: record.pools,
        peer,
    })
}

/// Checks the key and that its role allows `need`; a refusal for the role
/// is written to the audit log as `action`.
pub async fn authorize<T>(
    state: &State,
    req: &Request<T>,
    need: Need,
    action: &str,
) -> Result<Principal, Status> {
    let who = authenticate(state, req).await?;
    permit(state, &who, need, action).await?;
    Ok(who)
}

/// Whether `who`'s role allows `need`; a refusal is written to the audit log
/// as `action`.
pub async fn permit(
    state: &State,
    who: &Principal,
    need: Need,
    action: &str,
) -> Result<(), Status> {
    if need.allows(who.role) {
        return Ok(());
    }
    let status = Status::permission_denied(format!(
        "{action} needs role {}; this key has role {}",
        need.roles(),
        who.role.as_str()
    ));
    audit::record(state, who, action, "", Err(&status), "").await;
    Err(status)
}
