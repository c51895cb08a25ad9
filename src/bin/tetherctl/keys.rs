//! API keys and the audit log (role admin).

use clap::{Subcommand, ValueEnum};
use tether::proto::{
    CreateApiKeyRequest, ListApiKeysRequest, ListAuditEventsRequest, RevokeApiKeyRequest, Role,
};

use crate::{
    connect::{ConnectArgs, status},
    output::{self, Format, Table},
};

/// A role, as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// Everything in the org, including keys and the audit log.
    Admin,
    /// Agents, pools, tokens, connections, jobs, dialing.
    Operator,
    /// Read-only.
    Viewer,
    /// Dial only the granted connections and pools (the connector runtime).
    Dialer,
}

impl RoleArg {
    fn to_proto(self) -> Role {
        match self {
            RoleArg::Admin => Role::Admin,
            RoleArg::Operator => Role::Operator,
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Dialer => Role::Dialer,
        }
    }
}

fn role_name(r: i32) -> String {
    Role::try_from(r)
        .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
        .unwrap_or_else(|_| format!("unknown({r})"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key and print it (shown once).
    Create {
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Another org (admins of the "default" org only); creates the org.
        #[arg(long, default_value = "")]
        org: String,
        /// A connection a dialer key may dial (repeatable).
        #[arg(long = "connection")]
        connections: Vec<String>,
        /// A pool a dialer key may dial any target of (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// A note for operators.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys (never their secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key id (the part after tether-key.v1.).
        key_id: String,
    },
}

pub(crate) async fn keys(c: &ConnectArgs, format: Format, cmd: KeysCommand) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        KeysCommand::Create {
            role,
            org,
            connections,
            pools,
            description,
        } => {
            let resp = admin
                .create_api_key(CreateApiKeyRequest {
                    role: role.to_proto() as i32,
                    org_id: org,
                    connections,
                    pools,
                    description,
                })
                .await
                .map_err(|s| status("creating the key", s))?
                .into_inner();
            let key = resp.key.unwrap_or_default();
            match format {
                Format::Json => output::fields(
                    format,
                    &[
                        ("key_id", key.key_id),
                        ("org", key.org_id),
                        ("role", role_name(key.role)),
                        ("api_key", resp.api_key),
                    ],
                ),
                Format::Table => {
                    output::line(&resp.api_key);
                    eprintln!(
                        "key {} ({}, org {:?}). Keep the line above in a secret store and give it as TETHER_API_KEY \
                         or --api-key-file; it is not shown again.",
                        key.key_id,
                        role_name(key.role),
                        key.org_id
                    );
                }
            }
        }
        KeysCommand::List { all } => {
            let resp = admin
                .list_api_keys(ListApiKeysRequest {
                    include_revoked: all,
                })
                .await
                .map_err(|s| status("listing keys", s))?
                .into_inner();
            let mut t = Table::new(&[
                "KEY",
                "ROLE",
                "GRANTS",
                "CREATED",
                "LAST USED",
                "REVOKED",
                "DESCRIPTION",
            ]);
            for k in resp.keys {
                let grants: Vec<String> = k
                    .connections
                    .iter()
                    .map(|c| format!("connection:{c}"))
                    .chain(k.pools.iter().map(|p| format!("pool:{p}")))
                    .collect();
                t.row(vec![
                    k.key_id,
                    role_name(k.role),
                    grants.join(","),
                    output::time(k.created_unix_ms),
                    output::time(k.last_used_unix_ms),
                    output::time(k.revoked_unix_ms),
                    k.description,
                ]);
            }
            t.print(format);
        }
        KeysCommand::Revoke { key_id } => {
            let k = admin
                .revoke_api_key(RevokeApiKeyRequest { key_id })
                .await
                .map_err(|s| status("revoking the key", s))?
                .into_inner();
            output::fields(
                format,
                &[
                    ("key_id", k.key_id),
                    ("revoked", output::time(k.revoked_unix_ms)),
                ],
            );
        }
    }
    Ok(())
}

pub(crate) async fn audit(c: &ConnectArgs, format: Format, limit: u32) -> anyhow::Result<()> {
    let resp = c
        .admin()?
        .list_audit_events(ListAuditEventsRequest {
            limit,
            before_unix_ms: 0,
        })
        .await
        .map_err(|s| status("reading the audit log", s))?
        .into_inner();
    let mut t = Table::new(&[
        "TIME", "KEY", "ROLE", "ACTION", "TARGET", "FROM", "RESULT", "DETAIL",
    ]);
    for e in resp.events {
        t.row(vec![
            output::time(e.time_unix_ms),
            e.key_id,
            role_name(e.role),
            e.action,
            e.target,
            e.peer_address,
            e.result,
            e.detail,
        ]);
    }
    t.print(format);
    Ok(())
}
