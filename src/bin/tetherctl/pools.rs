//! `tetherctl pools`: agent counts, version and configuration pins, and
//! rolling restarts (recycle).

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use tether::proto::{
    GetAgentConfigRequest, ListPoolsRequest, RecyclePoolRequest, UpdatePoolRequest,
};

use crate::{
    admin::parse_duration,
    connect::{ConnectArgs, status},
    output::{self, Format, Table},
};

#[derive(Debug, Subcommand)]
pub(crate) enum PoolsCommand {
    /// Pools with their agent counts and pins.
    List,
    /// Pin the version and configuration hash a pool's agents should run;
    /// agents that differ are flagged as drifted. Empty values unpin.
    Pin {
        /// The pool.
        pool: String,
        /// Copy the version and configuration hash of this (known-good) agent.
        #[arg(long, conflicts_with_all = ["version", "config_hash"])]
        from_agent: Option<String>,
        /// The agent version, e.g. 0.1.0.
        #[arg(long, default_value = "")]
        version: String,
        /// The configuration hash (`tetherctl agents config ID` shows it).
        #[arg(long, default_value = "")]
        config_hash: String,
    },
    /// Drain, restart, verify and undrain the pool's agents one at a time;
    /// stops at the first that does not come back healthy.
    Recycle {
        /// The pool.
        pool: String,
        /// How long each agent may take to finish its channels.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_wait: Duration,
        /// How long each agent may take to come back after its restart.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        reattach_wait: Duration,
    },
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

pub(crate) async fn pools(
    c: &ConnectArgs,
    format: Format,
    cmd: PoolsCommand,
) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        PoolsCommand::List => {
            let resp = admin
                .list_pools(ListPoolsRequest {})
                .await
                .map_err(|s| status("listing pools", s))?
                .into_inner();
            let mut t = Table::new(&["POOL", "AGENTS", "READY", "PINNED VERSION", "PINNED CONFIG"]);
            let pin = |p: String| if p.is_empty() { "-".to_owned() } else { p };
            for p in resp.pools {
                t.row(vec![
                    p.name,
                    p.agents.to_string(),
                    p.ready_agents.to_string(),
                    pin(p.pinned_version),
                    pin(p.pinned_config_hash),
                ]);
            }
            t.print(format);
        }
        PoolsCommand::Pin {
            pool,
            from_agent,
            version,
            config_hash,
        } => {
            let (version, config_hash) = match from_agent {
                None => (version, config_hash),
                Some(agent_id) => {
                    let c = admin
                        .get_agent_config(GetAgentConfigRequest { agent_id })
                        .await
                        .map_err(|s| status("reading the agent's configuration", s))?
                        .into_inner()
                        .config
                        .unwrap_or_default();
                    (c.agent_version, c.config_hash)
                }
            };
            let p = admin
                .update_pool(UpdatePoolRequest {
                    name: pool,
                    pinned_version: version,
                    pinned_config_hash: config_hash,
                })
                .await
                .map_err(|s| status("pinning the pool", s))?
                .into_inner();
            output::fields(
                format,
                &[
                    ("pool", p.name),
                    ("pinned version", p.pinned_version),
                    ("pinned config hash", p.pinned_config_hash),
                ],
            );
        }
        PoolsCommand::Recycle {
            pool,
            drain_wait,
            reattach_wait,
        } => {
            let r = admin
                .recycle_pool(RecyclePoolRequest {
                    pool: pool.clone(),
                    drain_wait_ms: ms(drain_wait),
                    reattach_wait_ms: ms(reattach_wait),
                })
                .await
                .map_err(|s| status("recycling the pool", s))?
                .into_inner();
            let mut t = Table::new(&["AGENT", "OK", "DETAIL"]);
            for s in r.steps {
                t.row(vec![
                    s.agent_id,
                    if s.ok { "ok" } else { "FAILED" }.into(),
                    s.detail,
                ]);
            }
            t.print(format);
            if !r.completed {
                bail!("pool {pool} was not fully recycled (see above)");
            }
        }
    }
    Ok(())
}
