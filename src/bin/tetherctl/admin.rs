//! Admin commands: tokens, agents, connections, info.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, bail};
use clap::Subcommand;
use tether::proto::{
    AgentState, CreateConnectionRequest, CreateEnrollmentTokenRequest, DeleteConnectionRequest,
    GetAgentRequest, GetServerInfoRequest, ListAgentsRequest, ListConnectionsRequest,
    ListEnrollmentTokensRequest, RevokeAgentRequest, RevokeEnrollmentTokenRequest,
};

use crate::{
    connect::{ConnectArgs, status},
    diagnose,
    output::{self, Format, Table},
};

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token and print the join token (shown once).
    Create {
        /// The pool agents enrolled with it serve.
        #[arg(long)]
        pool: String,
        /// How long it stays valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Labels for enrolled agents, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A note for operators.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this pool.
        #[arg(long, default_value = "")]
        pool: String,
        /// Include revoked, expired and used-up tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token; agents already enrolled keep working.
    Revoke {
        /// The token id (the first part of the join token).
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// List agents with their state.
    List {
        /// Only this pool.
        #[arg(long, default_value = "")]
        pool: String,
    },
    /// Show one agent in detail.
    Get {
        /// The agent id.
        agent_id: String,
    },
    /// Revoke an agent: its session is cut at once and it can neither
    /// reattach nor renew; it must re-enroll with a new token.
    Revoke {
        /// The agent id.
        agent_id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// From the agent, inside its network: resolve HOST, connect to PORT,
    /// optionally handshake TLS; each step timed. Obeys the agent's egress
    /// allow-list.
    Probe(diagnose::ProbeArgs),
    /// Recent log lines of the agent (from its memory, secrets redacted).
    Logs(diagnose::LogsArgs),
    /// The agent's effective configuration (secrets redacted) and its drift
    /// from the pool's pins.
    Config {
        /// The agent id.
        agent_id: String,
    },
    /// Stop new channels and jobs on the agent and wait for running ones.
    Drain {
        /// The agent id.
        agent_id: String,
        /// How long to wait for running channels: 30s, 5m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Let a drained agent take channels and jobs again.
    Undrain {
        /// The agent id.
        agent_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// Add a connection: a name for pool + target, optionally with a
    /// gateway port that clients (psql, JDBC) connect to.
    Add {
        /// The name: letters, digits, '-' and '_'.
        name: String,
        /// The pool whose agents reach the target.
        #[arg(long)]
        pool: String,
        /// host:port as the agent resolves it.
        #[arg(long)]
        target: String,
        /// Gateway listen address, e.g. 127.0.0.1:15432 (127.0.0.1:0 picks
        /// a free port).
        #[arg(long)]
        gateway: Option<String>,
    },
    /// List connections and their gateway addresses.
    List,
    /// Remove a connection and close its gateway port.
    Remove {
        /// The name.
        name: String,
    },
}

pub(crate) async fn tokens(
    c: &ConnectArgs,
    format: Format,
    cmd: TokensCommand,
) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        TokensCommand::Create {
            pool,
            ttl,
            max_uses,
            labels,
            description,
        } => {
            let ttl_seconds = u32::try_from(ttl.as_secs()).context("--ttl is too long")?;
            let resp = admin
                .create_enrollment_token(CreateEnrollmentTokenRequest {
                    pool,
                    ttl_seconds,
                    max_uses,
                    labels: labels.into_iter().collect::<HashMap<_, _>>(),
                    description,
                })
                .await
                .map_err(|s| status("creating the token", s))?
                .into_inner();
            let token = resp.token.unwrap_or_default();
            match format {
                Format::Json => output::fields(
                    format,
                    &[
                        ("token_id", token.token_id),
                        ("pool", token.pool),
                        ("expires", output::time(token.expires_unix_ms)),
                        ("join_token", resp.join_token),
                    ],
                ),
                Format::Table => {
                    output::line(&resp.join_token);
                    eprintln!(
                        "token {} for pool {:?}, {} use(s), expires {}. Give the line above to the agent \
                         as TETHER_JOIN_TOKEN or in a file (--join-token-file); it is not shown again.",
                        token.token_id,
                        token.pool,
                        token.max_uses,
                        output::time(token.expires_unix_ms)
                    );
                }
            }
        }
        TokensCommand::List { pool, all } => {
            let resp = admin
                .list_enrollment_tokens(ListEnrollmentTokensRequest {
                    pool,
                    include_inactive: all,
                })
                .await
                .map_err(|s| status("listing tokens", s))?
                .into_inner();
            let mut t = Table::new(&[
                "TOKEN",
                "POOL",
                "USES",
                "EXPIRES",
                "LAST USED",
                "REVOKED",
                "DESCRIPTION",
            ]);
            for tok in resp.tokens {
                t.row(vec![
                    tok.token_id,
                    tok.pool,
                    format!("{}/{}", tok.uses, tok.max_uses),
                    output::time(tok.expires_unix_ms),
                    output::time(tok.last_used_unix_ms),
                    output::time(tok.revoked_unix_ms),
                    tok.description,
                ]);
            }
            t.print(format);
        }
        TokensCommand::Revoke { token_id } => {
            let tok = admin
                .revoke_enrollment_token(RevokeEnrollmentTokenRequest { token_id })
                .await
                .map_err(|s| status("revoking the token", s))?
                .into_inner();
            output::fields(
                format,
                &[
                    ("token_id", tok.token_id),
                    ("revoked", output::time(tok.revoked_unix_ms)),
                ],
            );
        }
    }
    Ok(())
}

fn state_name(state: i32) -> String {
    AgentState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("AGENT_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({state})"))
}

pub(crate) async fn agents(
    c: &ConnectArgs,
    format: Format,
    cmd: AgentsCommand,
) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        AgentsCommand::List { pool } => {
            let resp = admin
                .list_agents(ListAgentsRequest { pool, state: 0 })
                .await
                .map_err(|s| status("listing agents", s))?
                .into_inner();
            let mut t = Table::new(&[
                "AGENT",
                "POOL",
                "STATE",
                "VERSION",
                "HOST",
                "CHANNELS",
                "LAST HEARTBEAT",
                "RTT",
                "DRIFT",
                "PROBLEM",
            ]);
            for a in resp.agents {
                let problem = a
                    .health
                    .as_ref()
                    .map(|h| h.problem_code.clone())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "-".into());
                t.row(vec![
                    a.agent_id,
                    a.pool,
                    state_name(a.state),
                    a.version,
                    a.hostname,
                    a.open_channels.to_string(),
                    output::time(a.last_heartbeat_unix_ms),
                    format!("{:.1}ms", a.rtt_us as f64 / 1000.0),
                    if a.drift { "drift" } else { "-" }.into(),
                    problem,
                ]);
            }
            t.print(format);
        }
        AgentsCommand::Get { agent_id } => {
            let a = admin
                .get_agent(GetAgentRequest { agent_id })
                .await
                .map_err(|s| status("getting the agent", s))?
                .into_inner();
            show_agent(format, a);
        }
        AgentsCommand::Revoke { agent_id, reason } => {
            let a = admin
                .revoke_agent(RevokeAgentRequest { agent_id, reason })
                .await
                .map_err(|s| status("revoking the agent", s))?
                .into_inner();
            show_agent(format, a);
        }
        AgentsCommand::Probe(args) => diagnose::probe(&mut admin, format, args).await?,
        AgentsCommand::Logs(args) => diagnose::logs(&mut admin, format, args).await?,
        AgentsCommand::Config { agent_id } => {
            diagnose::config(&mut admin, format, agent_id).await?;
        }
        AgentsCommand::Drain { agent_id, wait } => {
            diagnose::drain(&mut admin, format, agent_id, wait).await?;
        }
        AgentsCommand::Undrain { agent_id } => {
            let a = admin
                .undrain_agent(tether::proto::UndrainAgentRequest { agent_id })
                .await
                .map_err(|s| status("undraining the agent", s))?
                .into_inner();
            show_agent(format, a);
        }
    }
    Ok(())
}

pub(crate) fn show_agent(format: Format, a: tether::proto::Agent) {
    let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let health = diagnose::health_fields(a.health.as_ref(), &a.history);
    let mut pairs = vec![
        ("agent", a.agent_id),
        ("org", a.org_id),
        ("pool", a.pool),
        ("state", state_name(a.state)),
        ("version", a.version),
        ("host", a.hostname),
        ("peer address", a.peer_address),
        ("labels", labels.join(",")),
        ("capabilities", a.capabilities.join(",")),
        ("credential names", a.credential_names.join(",")),
        ("enrolled", output::time(a.enrolled_unix_ms)),
        ("connected", output::time(a.connected_unix_ms)),
        ("last heartbeat", output::time(a.last_heartbeat_unix_ms)),
        ("rtt", format!("{:.1}ms", a.rtt_us as f64 / 1000.0)),
        ("clock skew", format!("{}ms", a.clock_skew_ms)),
        (
            "certificate expires",
            output::time(a.certificate_not_after_unix_ms),
        ),
        ("open channels", a.open_channels.to_string()),
        ("session", a.session_id),
        ("config hash", a.config_hash),
        (
            "drift",
            if a.drift {
                "yes (see `tetherctl agents config`)"
            } else {
                "no"
            }
            .into(),
        ),
    ];
    pairs.extend(health);
    output::fields(format, &pairs);
}

pub(crate) async fn connections(
    c: &ConnectArgs,
    format: Format,
    cmd: ConnectionsCommand,
) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        ConnectionsCommand::Add {
            name,
            pool,
            target,
            gateway,
        } => {
            let (host, port) = split_host_port(&target).context("--target")?;
            let conn = admin
                .create_connection(CreateConnectionRequest {
                    name,
                    pool,
                    target_host: host,
                    target_port: u32::from(port),
                    gateway_listen: gateway.unwrap_or_default(),
                })
                .await
                .map_err(|s| status("adding the connection", s))?
                .into_inner();
            output::fields(
                format,
                &[
                    ("connection", conn.name),
                    ("pool", conn.pool),
                    (
                        "target",
                        format!("{}:{}", conn.target_host, conn.target_port),
                    ),
                    ("gateway", conn.gateway_address),
                ],
            );
        }
        ConnectionsCommand::List => {
            let resp = admin
                .list_connections(ListConnectionsRequest {})
                .await
                .map_err(|s| status("listing connections", s))?
                .into_inner();
            let mut t = Table::new(&["NAME", "POOL", "TARGET", "GATEWAY", "CHANNELS"]);
            for conn in resp.connections {
                t.row(vec![
                    conn.name,
                    conn.pool,
                    format!("{}:{}", conn.target_host, conn.target_port),
                    if conn.gateway_address.is_empty() {
                        "-".into()
                    } else {
                        conn.gateway_address
                    },
                    conn.open_channels.to_string(),
                ]);
            }
            t.print(format);
        }
        ConnectionsCommand::Remove { name } => {
            admin
                .delete_connection(DeleteConnectionRequest { name: name.clone() })
                .await
                .map_err(|s| status("removing the connection", s))?;
            output::line(&format!("removed connection {name}"));
        }
    }
    Ok(())
}

pub(crate) async fn info(c: &ConnectArgs, format: Format) -> anyhow::Result<()> {
    let info = c
        .admin()?
        .get_server_info(GetServerInfoRequest {})
        .await
        .map_err(|s| status("getting server info", s))?
        .into_inner();
    output::fields(
        format,
        &[
            ("version", info.version),
            ("replica", info.replica_id),
            ("org", info.org_id),
            ("store", info.store),
            ("public endpoint", info.public_endpoint),
            ("ca pin", info.ca_pin),
        ],
    );
    Ok(())
}

/// `host:port` or `[v6]:port`.
pub(crate) fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .with_context(|| format!("{s:?}: write an IPv6 target as [addr]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .with_context(|| format!("{s:?} has no port; write host:port"))?
    };
    if host.is_empty() {
        bail!("{s:?} has no host; write host:port");
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{s:?}: the port must be 1-65535"))?;
    Ok((host.to_owned(), port))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: write a label as key=value")),
    }
}

/// `90s`, `30m`, `24h`, `7d` (also `ms`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    tether::config::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_durations_parse() {
        assert_eq!(split_host_port("db:5432").unwrap(), ("db".into(), 5432));
        assert_eq!(split_host_port("[::1]:5432").unwrap(), ("::1".into(), 5432));
        assert!(split_host_port("db").is_err());
        assert!(split_host_port("db:0").is_err());
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
