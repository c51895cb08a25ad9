//! The audit log: who did what, when, from where, and with what result.
//! Every changing Admin call and every refusal for a role is recorded in the
//! caller's org. Entries never hold secrets: targets are ids and names.

use tonic::Status;

use crate::{
    auth::Principal,
    state::{State, now_ms},
    store::AuditRecord,
};

/// The entry for one action, for a caller that stores it with the action
/// itself (a submitted job and its entry commit together).
pub fn entry(
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<(), &Status>,
    detail: &str,
) -> AuditRecord {
    let (result, detail) = match result {
        Ok(()) => ("ok".to_owned(), detail.to_owned()),
        Err(s) => (format!("{:?}", s.code()), s.message().to_owned()),
    };
    AuditRecord {
        org_id: who.org_id.clone(),
        time_ms: now_ms(),
        key_id: who.key_id.clone(),
        role: who.role.as_str().to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        peer: who.peer.clone(),
        result,
        detail,
    }
}

/// Records one action. A failure to write is logged, not returned: the
/// action already happened (or was refused) and the caller must learn its
/// real outcome.
pub async fn record(
    state: &State,
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<(), &Status>,
    detail: &str,
) {
    let event = entry(who, action, target, result, detail);
    if let Err(e) = state.store.insert_audit(&event).await {
        tracing::error!(error = %e, action, "could not write the audit log");
    }
}

/// Records the outcome of a call and passes it through.
pub async fn outcome<T>(
    state: &State,
    who: &Principal,
    action: &str,
    target: &str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    match &result {
        Ok(_) => record(state, who, action, target, Ok(()), "").await,
        Err(s) => record(state, who, action, target, Err(s), "").await,
    }
    result
}
