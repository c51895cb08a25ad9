//! Job types every agent runs without configuration: `echo` (the result is
//! the payload: a no-op for tests and benchmarks) and `probe` (the probe
//! command as a job: `{"host": "db", "port": 5432, "tls": false}`, under
//! the agent's egress policy).

use std::time::Duration;

use serde::Deserialize;
use tether::proto::ProbeCommand;

use super::Failure;
use crate::{egress::Policy, probe};

/// The built-in types.
pub const TYPES: [&str; 2] = ["echo", "probe"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeInput {
    host: String,
    port: u16,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    sni: String,
}

/// Runs a built-in; `None` if `job_type` is not one.
pub async fn run(
    job_type: &str,
    payload: &[u8],
    policy: &Policy,
    budget: Duration,
) -> Option<Result<Vec<u8>, Failure>> {
    Some(match job_type {
        "echo" => Ok(payload.to_vec()),
        "probe" => probe_job(payload, policy, budget).await,
        _ => return None,
    })
}

async fn probe_job(payload: &[u8], policy: &Policy, budget: Duration) -> Result<Vec<u8>, Failure> {
    let input: ProbeInput = serde_json::from_slice(payload).map_err(|e| Failure {
        error: format!(
            "the probe payload is not valid: {e}; send JSON like {{\"host\": \"db.internal\", \"port\": 5432, \"tls\": false}}"
        ),
        retryable: false,
    })?;
    let result = probe::run(
        policy,
        ProbeCommand {
            host: input.host,
            port: u32::from(input.port),
            tls: input.tls,
            tls_server_name: input.sni,
        },
        budget,
    )
    .await;
    let steps: Vec<serde_json::Value> = result
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "step": s.name, "ok": s.ok, "duration_us": s.duration_us, "detail": s.detail,
            })
        })
        .collect();
    let out = serde_json::json!({ "ok": result.ok, "steps": steps });
    if result.ok {
        Ok(out.to_string().into_bytes())
    } else {
        Err(Failure {
            error: format!("the probe failed: {out}"),
            retryable: true,
        })
    }
}
