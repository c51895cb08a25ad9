//! Whether any agent of a pool could ever run a job: one that declares the
//! job's type and every credential it needs. A job nobody can run is
//! `unschedulable` with the reason, not silently pending; it becomes
//! pending again when such an agent appears.

use crate::state::{State, now_ms};
use crate::store::{AgentRecord, StoreError};

/// Why no agent of `pool` can run the job, or `None` if one can.
pub fn why_not(
    agents: &[AgentRecord],
    pool: &str,
    job_type: &str,
    credentials: &[String],
) -> Option<String> {
    let members: Vec<&AgentRecord> = agents
        .iter()
        .filter(|a| a.pool == pool && a.revoked_ms == 0)
        .collect();
    if members.is_empty() {
        return Some(format!(
            "pool {pool:?} has no enrolled agents; enroll one with a token from `tetherctl tokens create --pool {pool}`"
        ));
    }
    let typed: Vec<&&AgentRecord> = members
        .iter()
        .filter(|a| a.capabilities.iter().any(|c| c == job_type))
        .collect();
    if typed.is_empty() {
        let mut declared: Vec<&str> = members
            .iter()
            .flat_map(|a| a.capabilities.iter().map(String::as_str))
            .collect();
        declared.sort_unstable();
        declared.dedup();
        return Some(format!(
            "no agent of pool {pool:?} runs job type {job_type:?} (they run: {}); add a handler for it to an \
             agent (--handler {job_type}=/path/to/program, or under `handlers:` in its configuration)",
            if declared.is_empty() {
                "nothing".to_owned()
            } else {
                declared.join(", ")
            }
        ));
    }
    let equipped = typed
        .iter()
        .any(|a| credentials.iter().all(|c| a.credential_names.contains(c)));
    if equipped {
        return None;
    }
    let missing: Vec<&str> = credentials
        .iter()
        .filter(|c| !typed.iter().any(|a| a.credential_names.contains(*c)))
        .map(String::as_str)
        .collect();
    Some(format!(
        "no agent of pool {pool:?} that runs {job_type:?} holds every credential it needs ({}); configure \
         them on an agent (--credential NAME=file:/path or NAME=env:VAR, or under `credentials:`){}",
        credentials.join(", "),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; held by none: {}", missing.join(", "))
        }
    ))
}

/// Re-checks every waiting job shape against the agents: pending jobs no
/// agent can run become unschedulable, unschedulable ones that an agent
/// can now run become pending. Returns whether any became pending.
pub async fn recheck(state: &State) -> Result<bool, StoreError> {
    let shapes = state.store.waiting_job_shapes().await?;
    let mut agents_by_org: std::collections::HashMap<String, Vec<AgentRecord>> =
        std::collections::HashMap::new();
    let mut freed = false;
    for shape in shapes {
        if !agents_by_org.contains_key(&shape.0) {
            let list = state.store.list_agents(&shape.0).await?;
            agents_by_org.insert(shape.0.clone(), list);
        }
        let agents = agents_by_org.get(&shape.0).map_or(&[][..], Vec::as_slice);
        let reason = why_not(agents, &shape.1, &shape.2, &shape.3);
        let changed = state
            .store
            .set_schedulable(&shape, reason.as_deref(), now_ms())
            .await?;
        if changed > 0 && reason.is_none() {
            freed = true;
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(pool: &str, caps: &[&str], creds: &[&str]) -> AgentRecord {
        AgentRecord {
            pool: pool.into(),
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            credential_names: creds.iter().map(|c| (*c).to_owned()).collect(),
            ..AgentRecord::default()
        }
    }

    #[test]
    fn the_reason_names_what_is_missing() {
        let none = why_not(&[], "db", "sync", &[]).unwrap();
        assert!(none.contains("no enrolled agents"), "{none}");
        let agents = [
            agent("db", &["echo"], &[]),
            agent("db", &["git"], &["https_pat"]),
        ];
        let t = why_not(&agents, "db", "sync", &[]).unwrap();
        assert!(
            t.contains("runs job type \"sync\"") && t.contains("echo, git"),
            "{t}"
        );
        let c = why_not(&agents, "db", "git", &["ssh_key".into()]).unwrap();
        assert!(c.contains("held by none: ssh_key"), "{c}");
        assert_eq!(why_not(&agents, "db", "git", &["https_pat".into()]), None);
        let mut revoked = agent("db", &["sync"], &[]);
        revoked.revoked_ms = 1;
        assert!(why_not(&[revoked], "db", "sync", &[]).is_some());
    }
}
