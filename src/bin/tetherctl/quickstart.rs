//! `tetherctl quickstart`: a control plane and an agent on this machine,
//! wired to a local target (PostgreSQL on 127.0.0.1:5432 by default), with
//! a gateway port to point a client at. Ctrl-C stops both.
//!
//! The binaries are taken from next to `tetherctl` (a cargo build puts them
//! there) or from PATH. State lives in `--dir`, so a second run reuses the
//! CA, the admin key and the agent's identity.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use nix::{sys::signal, unistd::Pid};
use secrecy::ExposeSecret;
use tether::proto::{
    CreateConnectionRequest, CreateEnrollmentTokenRequest, DeleteConnectionRequest,
    ListAgentsRequest, ListConnectionsRequest,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};

use crate::{admin::split_host_port, connect::ConnectArgs, output};

/// How long each process may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub(crate) struct QuickstartArgs {
    /// Directory for the state and logs of both processes.
    #[arg(long, default_value = "tether-quickstart")]
    dir: PathBuf,
    /// The target the agent reaches, host:port.
    #[arg(long, default_value = "127.0.0.1:5432")]
    target: String,
    /// The pool the agent serves.
    #[arg(long, default_value = "quickstart")]
    pool: String,
    /// The name of the connection to the target.
    #[arg(long, default_value = "postgres")]
    connection: String,
    /// Where the gateway listens (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    gateway: String,
}

/// A child process whose JSON log lines go to a file.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Asks the process to stop (SIGTERM), then waits; kills it after 10 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within 10 s; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// Finds a sibling binary of tetherctl, else one on PATH.
fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{name} was not found next to tetherctl or on PATH; build everything with `cargo build --release` first"
    )
}

/// Starts `cmd`, copies its stdout to `log`, and waits until a JSON log line
/// satisfies `ready` (returning what it extracted).
async fn start<T: Send + 'static>(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
    ready: impl Fn(&serde_json::Value) -> Option<T> + Send + 'static,
) -> anyhow::Result<(Proc, T)> {
    let mut file = tokio::fs::File::create(log)
        .await
        .with_context(|| format!("creating {}", log.display()))?;
    let stderr = std::fs::File::create(log.with_extension("stderr.log"))
        .with_context(|| format!("creating the stderr log next to {}", log.display()))?;
    cmd.stdout(Stdio::piped())
        .stderr(stderr)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = oneshot::channel();
    // Ends at the child's end of output.
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
            if tx.is_some()
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(found) = ready(&v)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(found);
            }
        }
    });
    let found = tokio::select! {
        r = tokio::time::timeout(START_TIMEOUT, rx) => match r {
            Ok(Ok(found)) => found,
            _ => bail!("{name} did not become ready within {START_TIMEOUT:?}; see {}", log.display()),
        },
        status = child.wait() => bail!(
            "{name} exited during start-up ({}); see {} and its .stderr.log",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            log.display()
        ),
    };
    Ok((Proc { name, child }, found))
}

fn message(v: &serde_json::Value) -> Option<&str> {
    v.get("message").and_then(serde_json::Value::as_str)
}

pub(crate) async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let (target_host, target_port) = split_host_port(&args.target).context("--target")?;
    let cp_bin = find_binary("tether-controlplane")?;
    let agent_bin = find_binary("tether-agent")?;
    let dir = args.dir.clone();
    let cp_dir = dir.join("controlplane");
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    eprintln!("starting the control plane ({})", cp_bin.display());
    let mut cmd = Command::new(&cp_bin);
    cmd.arg("--data-dir").arg(&cp_dir).args([
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let (cp, (grpc, ops)) = start(
        "tether-controlplane",
        cmd,
        &dir.join("controlplane.log"),
        |v| {
            (message(v) == Some("control plane ready")).then(|| {
                let field = |k| {
                    v.get(k)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                (field("grpc"), field("ops"))
            })
        },
    )
    .await?;
    let endpoint = format!("https://{grpc}");
    let connect = ConnectArgs {
        endpoint: endpoint.clone(),
        ca_file: Some(cp_dir.join("ca.pem")),
        ca_pin: None,
        api_key_file: Some(cp_dir.join("admin.key")),
        data_dir: None,
    };
    let result = serve(
        &args,
        &connect,
        &agent_bin,
        &agent_dir,
        &dir,
        &endpoint,
        &ops,
        target_host,
        target_port,
    )
    .await;
    cp.stop().await;
    eprintln!("stopped");
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    args: &QuickstartArgs,
    connect: &ConnectArgs,
    agent_bin: &Path,
    agent_dir: &Path,
    dir: &Path,
    endpoint: &str,
    ops: &str,
    target_host: String,
    target_port: u16,
) -> anyhow::Result<()> {
    let mut admin = connect.admin()?;
    let mut cmd = Command::new(agent_bin);
    cmd.args(["--endpoint", endpoint, "--log-format", "json"])
        .arg("--state-dir")
        .arg(agent_dir)
        .arg("--allow")
        .arg(&args.target);
    if !agent_dir.join("agent.json").exists() {
        let token = admin
            .create_enrollment_token(CreateEnrollmentTokenRequest {
                pool: args.pool.clone(),
                description: "tetherctl quickstart".into(),
                ..CreateEnrollmentTokenRequest::default()
            })
            .await
            .map_err(|s| crate::connect::status("creating a join token", s))?
            .into_inner();
        // The token goes through the environment, never argv.
        cmd.env(
            "TETHER_JOIN_TOKEN",
            secrecy::SecretString::from(token.join_token).expose_secret(),
        );
    }
    eprintln!("starting the agent ({})", agent_bin.display());
    let (agent, ()) = start("tether-agent", cmd, &dir.join("agent.log"), |v| {
        (message(v) == Some("attached")).then_some(())
    })
    .await?;

    let existing = admin
        .list_connections(ListConnectionsRequest {})
        .await
        .map_err(|s| crate::connect::status("listing connections", s))?
        .into_inner();
    if existing
        .connections
        .iter()
        .any(|c| c.name == args.connection)
    {
        admin
            .delete_connection(DeleteConnectionRequest {
                name: args.connection.clone(),
            })
            .await
            .map_err(|s| crate::connect::status("replacing the connection", s))?;
    }
    let conn = admin
        .create_connection(CreateConnectionRequest {
            name: args.connection.clone(),
            pool: args.pool.clone(),
            target_host: target_host.clone(),
            target_port: u32::from(target_port),
            gateway_listen: args.gateway.clone(),
        })
        .await
        .map_err(|s| crate::connect::status("adding the connection", s))?
        .into_inner();
    let agents = admin
        .list_agents(ListAgentsRequest {
            pool: args.pool.clone(),
            state: 0,
        })
        .await
        .map_err(|s| crate::connect::status("listing agents", s))?
        .into_inner();
    let agent_id = agents
        .agents
        .first()
        .map_or("?", |a| a.agent_id.as_str())
        .to_owned();
    let gateway = conn.gateway_address.clone();
    let (gw_host, gw_port) = gateway.rsplit_once(':').unwrap_or((gateway.as_str(), ""));
    let cp_dir = dir.join("controlplane");
    let grpc = endpoint.trim_start_matches("https://");
    let try_line = match target_port {
        5432 => format!(
            "psql \"host={gw_host} port={gw_port} user=postgres dbname=postgres\" -c 'select version()'"
        ),
        3306 => format!("mysql -h {gw_host} -P {gw_port} -u root -e 'select version()'"),
        _ => format!(
            "tetherctl --endpoint {endpoint} --data-dir {} dial --connection {}",
            cp_dir.display(),
            args.connection
        ),
    };
    output::line(&format!(
        "\nTether is running. State and logs are in {dir}/.\n\n\
         \x20 control plane  {endpoint}   (metrics: http://{ops}/metrics)\n\
         \x20 agent          {agent_id} in pool {pool:?}, allowed to reach {target}\n\
         \x20 gateway        {gateway} -> {target} through the agent\n\n\
         Try it:\n\
         \x20 {try_line}\n\
         \x20 tetherctl --endpoint {endpoint} --data-dir {cp} agents list\n\
         \x20 grpcurl -cacert {cp}/ca.pem -H \"authorization: Bearer $(cat {cp}/admin.key)\" {grpc} tether.v1.Admin/ListAgents\n\n\
         Press Ctrl-C to stop both.",
        dir = dir.display(),
        pool = args.pool,
        target = args.target,
        cp = cp_dir.display(),
    ));
    let mut agent = agent;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = sigterm() => Ok(()),
        status = agent.child.wait() => Err(anyhow::anyhow!(
            "the agent exited ({}); see {}",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            dir.join("agent.log").display()
        )),
    };
    eprintln!("\nstopping");
    agent.stop().await;
    outcome
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
