//! Tether as every Tether measure uses it: a control plane, a near agent,
//! and a far agent that reaches the control plane through the 50 ms relay,
//! each pool with a gateway port to the target.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{procs, relay};

/// Half of the 50 ms round trip the far agent's relay adds.
pub(crate) const ONE_WAY: Duration = Duration::from_millis(25);

/// The running processes and their addresses.
pub(crate) struct Deployment {
    pub(crate) cp: procs::Proc,
    pub(crate) agent: procs::Proc,
    pub(crate) far_agent: procs::Proc,
    pub(crate) endpoint: String,
    pub(crate) cp_dir: PathBuf,
    /// Gateway of pool `near` (the near agent).
    pub(crate) gateway: SocketAddr,
    /// Gateway of pool `far` (the agent behind the relay).
    pub(crate) far_gateway: SocketAddr,
}

/// Starts it all in `dir`, every agent allowed to reach `target`.
pub(crate) async fn deploy(dir: &Path, target: SocketAddr) -> anyhow::Result<Deployment> {
    let cp_dir = dir.join("cp");
    let (cp, grpc) = procs::control_plane(&cp_dir).await?;
    let endpoint = format!("https://{grpc}");
    let ctl = |a: Vec<String>| {
        let endpoint = endpoint.clone();
        let cp_dir = cp_dir.clone();
        async move {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            procs::tetherctl(&endpoint, &cp_dir, &args).await
        }
    };
    let token = |pool: &str| {
        vec![
            "tokens".into(),
            "create".into(),
            "--pool".into(),
            pool.to_owned(),
        ]
    };
    let near_token = ctl(token("near")).await?;
    let agent = procs::agent(
        &endpoint,
        &dir.join("agent"),
        near_token.trim(),
        &target.to_string(),
    )
    .await?;
    let gateway = add_gateway(&ctl, "near", "near", target).await?;

    let relay = relay::start(grpc, ONE_WAY).await?;
    let far_token = ctl(token("far")).await?;
    let far_agent = procs::agent(
        &format!("https://{relay}"),
        &dir.join("far"),
        far_token.trim(),
        &target.to_string(),
    )
    .await?;
    let far_gateway = add_gateway(&ctl, "far", "far", target).await?;
    Ok(Deployment {
        cp,
        agent,
        far_agent,
        endpoint,
        cp_dir,
        gateway,
        far_gateway,
    })
}

async fn add_gateway<F, Fut>(
    ctl: &F,
    name: &str,
    pool: &str,
    target: SocketAddr,
) -> anyhow::Result<SocketAddr>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let out = ctl(vec![
        "-o".into(),
        "json".into(),
        "connections".into(),
        "add".into(),
        name.into(),
        "--pool".into(),
        pool.into(),
        "--target".into(),
        target.to_string(),
        "--gateway".into(),
        "127.0.0.1:0".into(),
    ])
    .await?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    v["gateway"]
        .as_str()
        .context("no gateway address")?
        .parse()
        .context("gateway address")
}
