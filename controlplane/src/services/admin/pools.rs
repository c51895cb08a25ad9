//! Pools: agent counts, and the version and configuration pins that drift
//! is measured against.

use std::collections::BTreeMap;

use tether::proto::{AgentState, ListPoolsResponse, Pool, UpdatePoolRequest};
use tonic::Status;

use super::{agents, validate};
use crate::{
    auth::Principal,
    state::{Shared, now_ms, store_status},
    store::PoolRecord,
};

fn pool_view(name: String, counts: (u32, u32), pins: Option<&PoolRecord>) -> Pool {
    Pool {
        name,
        agents: counts.0,
        ready_agents: counts.1,
        pinned_version: pins.map(|p| p.pinned_version.clone()).unwrap_or_default(),
        pinned_config_hash: pins
            .map(|p| p.pinned_config_hash.clone())
            .unwrap_or_default(),
    }
}

/// (enrolled, ready) per pool of the org.
async fn counts(state: &Shared, who: &Principal) -> Result<BTreeMap<String, (u32, u32)>, Status> {
    let records = state
        .store
        .list_agents(&who.org_id)
        .await
        .map_err(|e| store_status("listing agents", e))?;
    let mut pools: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for rec in records {
        let v = agents::view(state, rec, None);
        let entry = pools.entry(v.pool).or_default();
        entry.0 += 1;
        if v.state == AgentState::Connected as i32 {
            entry.1 += 1;
        }
    }
    Ok(pools)
}

pub(super) async fn list(state: &Shared, who: &Principal) -> Result<ListPoolsResponse, Status> {
    let mut counts = counts(state, who).await?;
    let pins = agents::pins_of(state, &who.org_id).await?;
    // Pools pinned before any agent enrolled are listed too.
    for name in pins.keys() {
        counts.entry(name.clone()).or_default();
    }
    let pools = counts
        .into_iter()
        .map(|(name, c)| {
            let p = pins.get(&name);
            pool_view(name, c, p)
        })
        .collect();
    Ok(ListPoolsResponse { pools })
}

/// Sets (or clears, with "") a pool's pins.
pub(super) async fn update(
    state: &Shared,
    who: &Principal,
    r: UpdatePoolRequest,
) -> Result<Pool, Status> {
    validate::check_pool(&r.name)?;
    if r.pinned_version.len() > 64
        || r.pinned_version
            .contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(Status::invalid_argument(
            "pinned_version must be a version string of at most 64 characters without spaces, e.g. 0.1.0",
        ));
    }
    let hash = r.pinned_config_hash.to_ascii_lowercase();
    if !hash.is_empty() && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(Status::invalid_argument(format!(
            "pinned_config_hash {:?} is not a SHA-256 in hex (64 characters); copy it from `tetherctl agents config ID`",
            r.pinned_config_hash
        )));
    }
    let record = PoolRecord {
        org_id: who.org_id.clone(),
        name: r.name.clone(),
        pinned_version: r.pinned_version,
        pinned_config_hash: hash,
        updated_ms: now_ms(),
    };
    state
        .store
        .upsert_pool(&record)
        .await
        .map_err(|e| store_status("saving the pool's pins", e))?;
    let c = counts(state, who)
        .await?
        .remove(&r.name)
        .unwrap_or_default();
    Ok(pool_view(r.name, c, Some(&record)))
}
