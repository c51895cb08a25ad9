//! `tetherctl`: the operator's command line for a Tether control plane.
//!
//! Every command is a call of the `Admin` (or `Dial`) gRPC API, so anything
//! it does can also be done with grpcurl. `quickstart` starts a control
//! plane and an agent on this machine and wires them to a local database.

mod admin;
mod connect;
mod diagnose;
mod dial;
mod events;
mod jobs;
mod keys;
mod output;
mod pools;
mod quickstart;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::connect::ConnectArgs;

/// Operate a Tether control plane: enrollment tokens, agents, connections,
/// dial-through, and a local quickstart.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrollment tokens: create one per agent (or batch) to enroll.
    #[command(subcommand)]
    Tokens(admin::TokensCommand),
    /// Enrolled agents: state, health, diagnostics, drain.
    #[command(subcommand)]
    Agents(admin::AgentsCommand),
    /// Pools: agent counts, version/config pins, rolling restarts.
    #[command(subcommand)]
    Pools(pools::PoolsCommand),
    /// Agent state changes and alerts (stale, offline, disk low, ...).
    Events(events::EventsArgs),
    /// Jobs that run on the agents of a pool: submit, list, get, cancel, logs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Connections: named routes (pool + target), optionally with a gateway port.
    #[command(subcommand)]
    Connections(admin::ConnectionsCommand),
    /// API keys and their roles (admin).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The audit log: who did what, when, from where (admin).
    Audit {
        /// How many events, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Facts about the control plane (version, CA pin, store).
    Info,
    /// Open a stream through an agent and copy it to stdin/stdout (like nc;
    /// usable as an ssh ProxyCommand).
    Dial(dial::DialArgs),
    /// Start a control plane and an agent here, wired to a local target
    /// (PostgreSQL on 127.0.0.1:5432 by default); Ctrl-C stops both.
    Quickstart(quickstart::QuickstartArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokens(c) => admin::tokens(&cli.connect, cli.output, c).await,
        Command::Agents(c) => admin::agents(&cli.connect, cli.output, c).await,
        Command::Pools(c) => pools::pools(&cli.connect, cli.output, c).await,
        Command::Events(args) => events::run(&cli.connect, cli.output, args).await,
        Command::Jobs(c) => jobs::jobs(&cli.connect, cli.output, c).await,
        Command::Connections(c) => admin::connections(&cli.connect, cli.output, c).await,
        Command::Keys(c) => keys::keys(&cli.connect, cli.output, c).await,
        Command::Audit { limit } => keys::audit(&cli.connect, cli.output, limit).await,
        Command::Info => admin::info(&cli.connect, cli.output).await,
        Command::Dial(args) => dial::run(&cli.connect, args).await,
        Command::Quickstart(args) => quickstart::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
