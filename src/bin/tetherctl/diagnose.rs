//! Remote diagnostics and drain: `tetherctl agents probe|logs|config|drain`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Args;
use tether::proto::{
    DrainAgentRequest, GetAgentConfigRequest, GetAgentLogsRequest, HealthSample, LogsCommand,
    ProbeAgentRequest, ProbeCommand,
};

use crate::{
    admin::{parse_duration, show_agent, split_host_port},
    connect::{Admin, status},
    output::{self, Format, Table},
};

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The agent id.
    agent_id: String,
    /// What to probe, host:port as the agent resolves it.
    target: String,
    /// Also handshake TLS and show the peer certificate.
    #[arg(long)]
    tls: bool,
    /// TLS server name (SNI) if not the host.
    #[arg(long, default_value = "")]
    sni: String,
    /// How long to wait: 10s, 1m (at most 60s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The agent id.
    agent_id: String,
    /// Only lines of the last 5m, 1h, ...
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// At most this many lines (newest), up to 2000.
    #[arg(long, default_value_t = 200)]
    lines: u32,
}

pub(crate) async fn probe(admin: &mut Admin, format: Format, a: ProbeArgs) -> anyhow::Result<()> {
    let (host, port) = split_host_port(&a.target)?;
    let result = admin
        .probe_agent(ProbeAgentRequest {
            agent_id: a.agent_id.clone(),
            probe: Some(ProbeCommand {
                host,
                port: u32::from(port),
                tls: a.tls,
                tls_server_name: a.sni,
            }),
            timeout_ms: u32::try_from(a.timeout.as_millis()).unwrap_or(u32::MAX),
        })
        .await
        .map_err(|s| status("probing from the agent", s))?
        .into_inner();
    let mut t = Table::new(&["STEP", "OK", "TIME", "DETAIL"]);
    for s in result.steps {
        t.row(vec![
            s.name,
            if s.ok { "ok" } else { "FAILED" }.into(),
            format!("{:.1}ms", s.duration_us as f64 / 1000.0),
            s.detail,
        ]);
    }
    t.print(format);
    if !result.ok {
        bail!(
            "the probe of {} from agent {} failed (see the failed step above)",
            a.target,
            a.agent_id
        );
    }
    Ok(())
}

pub(crate) async fn logs(admin: &mut Admin, format: Format, a: LogsArgs) -> anyhow::Result<()> {
    let since_unix_ms = match a.since {
        None => 0,
        Some(d) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            i64::try_from(now.saturating_sub(d).as_millis()).unwrap_or(0)
        }
    };
    let result = admin
        .get_agent_logs(GetAgentLogsRequest {
            agent_id: a.agent_id,
            logs: Some(LogsCommand {
                max_lines: a.lines,
                since_unix_ms,
            }),
        })
        .await
        .map_err(|s| status("fetching the agent's logs", s))?
        .into_inner();
    match format {
        Format::Json => {
            let mut t = Table::new(&["TIME", "LEVEL", "TARGET", "MESSAGE"]);
            for l in result.lines {
                t.row(vec![
                    l.time_unix_ms.to_string(),
                    l.level,
                    l.target,
                    l.message,
                ]);
            }
            t.print(format);
        }
        Format::Table => {
            if result.truncated {
                eprintln!("(older lines were dropped from the agent's buffer or cut by --lines)");
            }
            for l in result.lines {
                output::line(&format!(
                    "{} {:>5} {}: {}",
                    output::time(l.time_unix_ms),
                    l.level,
                    l.target,
                    l.message
                ));
            }
        }
    }
    Ok(())
}

pub(crate) async fn config(
    admin: &mut Admin,
    format: Format,
    agent_id: String,
) -> anyhow::Result<()> {
    let c = admin
        .get_agent_config(GetAgentConfigRequest { agent_id })
        .await
        .map_err(|s| status("fetching the agent's configuration", s))?
        .into_inner();
    let reported = c.config.unwrap_or_default();
    match format {
        Format::Json => output::fields(
            format,
            &[
                ("agent_version", reported.agent_version),
                ("config_hash", reported.config_hash),
                ("pinned_version", c.pinned_version),
                ("pinned_config_hash", c.pinned_config_hash),
                ("drift", c.drift.join("\n")),
                ("effective_yaml", reported.effective_yaml),
            ],
        ),
        Format::Table => {
            output::line(&format!("# agent version {}", reported.agent_version));
            output::line(&format!("# config hash   {}", reported.config_hash));
            let pin = |p: &str| {
                if p.is_empty() {
                    "(not pinned)".to_owned()
                } else {
                    p.to_owned()
                }
            };
            output::line(&format!(
                "# pinned        {} / {}",
                pin(&c.pinned_version),
                pin(&c.pinned_config_hash)
            ));
            if c.drift.is_empty() {
                output::line("# drift         none");
            }
            for d in &c.drift {
                output::line(&format!("# DRIFT: {d}"));
            }
            output::line(reported.effective_yaml.trim_end());
        }
    }
    Ok(())
}

pub(crate) async fn drain(
    admin: &mut Admin,
    format: Format,
    agent_id: String,
    wait: Duration,
) -> anyhow::Result<()> {
    let r = admin
        .drain_agent(DrainAgentRequest {
            agent_id: agent_id.clone(),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        })
        .await
        .map_err(|s| status("draining the agent", s))?
        .into_inner();
    let result = r.result.unwrap_or_default();
    if let Some(a) = r.agent {
        show_agent(format, a);
    }
    if result.completed {
        eprintln!("agent {agent_id} is drained: no channels or jobs are running on it");
        Ok(())
    } else {
        bail!(
            "agent {agent_id} is drained (takes no new work) but {} channels and {} jobs still run after {}; \
             wait longer (--wait) or let them finish",
            result.remaining_channels,
            result.remaining_jobs,
            output::human(wait)
        )
    }
}

/// The health sample as display fields, with a one-line history summary.
pub(crate) fn health_fields(
    h: Option<&HealthSample>,
    history: &[HealthSample],
) -> Vec<(&'static str, String)> {
    let Some(h) = h else {
        return vec![("health", "no sample yet".into())];
    };
    let mut out = vec![
        (
            "cpu (agent / host)",
            format!("{:.1}% / {:.1}%", h.process_cpu_percent, h.host_cpu_percent),
        ),
        (
            "memory (agent / host free)",
            format!(
                "{} / {} of {}",
                output::bytes(h.process_rss_bytes),
                output::bytes(h.host_memory_available_bytes),
                output::bytes(h.host_memory_total_bytes)
            ),
        ),
        (
            "workspace free",
            format!(
                "{} of {}, {} of {} inodes",
                output::bytes(h.workspace_disk_free_bytes),
                output::bytes(h.workspace_disk_total_bytes),
                h.workspace_inodes_free,
                h.workspace_inodes_total
            ),
        ),
        (
            "jobs (queued / running)",
            format!("{} / {}", h.queued_jobs, h.running_jobs),
        ),
        (
            "problem",
            if h.problem.is_empty() {
                "none".into()
            } else {
                format!("{}: {}", h.problem_code, h.problem)
            },
        ),
    ];
    if !history.is_empty() {
        let max_cpu = history
            .iter()
            .map(|s| s.process_cpu_percent)
            .fold(0.0_f64, f64::max);
        let min_disk = history
            .iter()
            .map(|s| s.workspace_disk_free_bytes)
            .min()
            .unwrap_or(0);
        out.push((
            "history",
            format!(
                "{} samples: agent cpu max {max_cpu:.1}%, workspace free min {}",
                history.len(),
                output::bytes(min_disk)
            ),
        ));
    }
    out
}
