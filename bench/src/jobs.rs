//! Jobs end to end: submit → a no-op handler (a real program the agent
//! starts) → succeeded, on SQLite and on PostgreSQL, against running the
//! same handler directly on this machine — the baseline, measured in the
//! same run.
//!
//! - Submit-to-start latency: one idle agent, one job at a time; from the
//!   client's submit call to the handler's first instruction (it writes
//!   its own start time, in nanoseconds, to a file named after the job).
//! - Throughput: 20 agents (4 jobs each at once), 5,000 jobs submitted by
//!   32 concurrent callers; from the first submit to the last job
//!   succeeded (the control plane's `tether_job_attempts_ended_total`).

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use secrecy::SecretString;
use tether::{
    client::{self, ApiKey, ControlPlaneAddr},
    proto::{
        CreateEnrollmentTokenRequest, GetJobRequest, JobState, ListJobsRequest, SubmitJobRequest,
        admin_client::AdminClient,
    },
    tls::{self, Trust},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{Row, percentile, procs};

type Admin = AdminClient<InterceptedService<Channel, ApiKey>>;

/// Jobs each agent runs at once (the agent's default).
pub(crate) const PER_AGENT: usize = 4;
/// Concurrent submitters in the throughput run.
pub(crate) const SUBMITTERS: usize = 32;
/// Bound on any one wait (a job, the whole throughput run).
const WAIT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) latency_jobs: usize,
    pub(crate) throughput_jobs: usize,
    pub(crate) agents: usize,
    /// A PostgreSQL server to create a throwaway database on (its own
    /// database in the URL is where `CREATE DATABASE` runs).
    pub(crate) postgres: String,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The no-op handler: records when it started, nothing else.
fn write_handler(dir: &Path) -> anyhow::Result<PathBuf> {
    let starts = dir.join("starts");
    std::fs::create_dir_all(&starts)?;
    let path = dir.join("noop.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ndate +%s%N > {}/\"$TETHER_JOB_ID\"\n",
            starts.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// When the handler of `job` started (Unix ns), once it has; `handler`
/// writes it next to itself.
async fn started_ns(handler: &Path, job: &str) -> anyhow::Result<u128> {
    let path = handler.with_file_name("starts").join(job);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(ns) = text.trim().parse()
        {
            return Ok(ns);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the handler of {job} did not start within {WAIT:?}");
        }
        // A stat every 200 µs: cheap, and well under the resolution we report.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The baseline: the handler started directly, as the agent would.
async fn direct(handler: &Path, plan: &Plan) -> anyhow::Result<(Vec<f64>, f64)> {
    let run = |id: String| {
        let handler = handler.to_owned();
        async move {
            let status = Command::new(&handler)
                .env_clear()
                .env("TETHER_JOB_ID", &id)
                .status()
                .await?;
            anyhow::ensure!(status.success(), "the handler failed: {status}");
            Ok::<_, anyhow::Error>(id)
        }
    };
    let mut latency = Vec::with_capacity(plan.latency_jobs);
    for i in 0..plan.latency_jobs {
        let t0 = unix_ns();
        let id = run(format!("direct-{i}")).await?;
        latency.push((started_ns(handler, &id).await?.saturating_sub(t0)) as f64 / 1e6);
    }
    let t0 = tokio::time::Instant::now();
    let done: Vec<anyhow::Result<String>> = stream::iter(0..plan.throughput_jobs)
        .map(|i| run(format!("direct-many-{i}")))
        .buffer_unordered(plan.agents * PER_AGENT)
        .collect()
        .await;
    for d in done {
        d?;
    }
    let rate = plan.throughput_jobs as f64 / t0.elapsed().as_secs_f64();
    Ok((latency, rate))
}

fn admin(grpc: SocketAddr, data_dir: &Path) -> anyhow::Result<Admin> {
    let ca = std::fs::read(data_dir.join("ca.pem")).context("the control plane's CA")?;
    let key = std::fs::read_to_string(data_dir.join("admin.key")).context("the admin key")?;
    let config = tls::client_config(&Trust::ca_pem(&ca)?, None)?;
    let channel = client::channel(
        &ControlPlaneAddr::parse(&format!("https://{grpc}"))?,
        config,
    )?;
    Ok(AdminClient::with_interceptor(
        channel,
        ApiKey::new(SecretString::from(key.trim().to_owned())),
    ))
}

fn noop(pool: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        pool: pool.into(),
        job_type: "noop".into(),
        max_attempts: 1,
        ..Default::default()
    }
}

/// Succeeded jobs of `pool` (each has one attempt), from the ops port's
/// metrics.
async fn succeeded(ops: SocketAddr, pool: &str) -> anyhow::Result<f64> {
    let mut s = tokio::net::TcpStream::connect(ops).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut body = String::new();
    // Bounded by the server closing the connection (HTTP/1.0).
    s.read_to_string(&mut body).await?;
    let want = format!("pool=\"{pool}\"");
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("tether_job_attempts_ended_total{")
                && l.contains(&want)
                && l.contains("outcome=\"succeeded\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// One backend's figures.
struct Measured {
    latency_ms: Vec<f64>,
    jobs_per_second: f64,
    /// The built-in `echo`: the queue's own rate, no process started.
    echo_per_second: f64,
}

async fn through_tether(
    handler: &Path,
    dir: &Path,
    plan: &Plan,
    store: &[&str],
) -> anyhow::Result<Measured> {
    let cp_dir = dir.join("cp");
    let (_cp, grpc, ops) = procs::control_plane_with(&cp_dir, store).await?;
    let endpoint = format!("https://{grpc}");
    let mut admin = admin(grpc, &cp_dir)?;
    let token_admin = admin.clone();
    let handler_arg = format!("noop={}", handler.display());
    let token = |pool: &str, uses: usize| {
        let mut admin = token_admin.clone();
        let pool = pool.to_owned();
        async move {
            anyhow::Ok(
                admin
                    .create_enrollment_token(CreateEnrollmentTokenRequest {
                        pool,
                        max_uses: u32::try_from(uses)?,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .join_token,
            )
        }
    };

    // Latency: one idle agent, one job at a time (the first ones warm up).
    let one = token("one", 1).await?;
    let agent = procs::agent_with(
        &endpoint,
        &dir.join("agent-one"),
        &one,
        &["--handler", &handler_arg],
    )
    .await?;
    let mut latency_ms = Vec::with_capacity(plan.latency_jobs);
    for i in 0..plan.latency_jobs + 20 {
        let t0 = unix_ns();
        let id = admin.submit_job(noop("one")).await?.into_inner().job_id;
        let start = match started_ns(handler, &id).await {
            Ok(ns) => ns,
            Err(e) => {
                let j = admin
                    .get_job(GetJobRequest { job_id: id })
                    .await?
                    .into_inner();
                bail!(
                    "{e} (the job is {:?}: {})",
                    JobState::try_from(j.state),
                    j.error
                );
            }
        };
        if i >= 20 {
            latency_ms.push(start.saturating_sub(t0) as f64 / 1e6);
        }
        // Idle again before the next: this job has ended.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let j = admin
                .get_job(GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner();
            if j.state == JobState::Succeeded as i32 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {id} did not succeed within {WAIT:?}: {}", j.error);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(agent);

    // Throughput: many agents, many jobs.
    let crowd = token("crowd", plan.agents).await?;
    let mut agents = Vec::with_capacity(plan.agents);
    for n in 0..plan.agents {
        agents.push(
            procs::agent_with(
                &endpoint,
                &dir.join(format!("agent-{n}")),
                &crowd,
                &["--handler", &handler_arg],
            )
            .await?,
        );
    }
    let jobs_per_second = throughput(&admin, ops, plan, "noop").await?;
    let echo_per_second = throughput(&admin, ops, plan, "echo").await?;
    drop(agents);
    Ok(Measured {
        latency_ms,
        jobs_per_second,
        echo_per_second,
    })
}

/// Submits the throughput run's jobs of `job_type` to pool `crowd` and
/// waits for them to succeed; jobs per second.
async fn throughput(
    admin: &Admin,
    ops: SocketAddr,
    plan: &Plan,
    job_type: &str,
) -> anyhow::Result<f64> {
    // The counter counts every run in the pool so far.
    let before = succeeded(ops, "crowd").await?;
    let t0 = tokio::time::Instant::now();
    let submitted: Vec<anyhow::Result<()>> = stream::iter(0..plan.throughput_jobs)
        .map(|_| {
            let mut admin = admin.clone();
            let mut job = noop("crowd");
            job.job_type = job_type.into();
            async move {
                admin.submit_job(job).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SUBMITTERS)
        .collect()
        .await;
    for s in submitted {
        s?;
    }
    let total = before + plan.throughput_jobs as f64;
    loop {
        if succeeded(ops, "crowd").await? >= total {
            break;
        }
        if t0.elapsed() > WAIT {
            let mut states = std::collections::BTreeMap::new();
            for j in admin
                .clone()
                .list_jobs(ListJobsRequest {
                    pool: "crowd".into(),
                    limit: 1000,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .jobs
            {
                let e = states
                    .entry(format!("{:?}", JobState::try_from(j.state)))
                    .or_insert((0, String::new()));
                e.0 += 1;
                e.1 = j.error;
            }
            bail!(
                "{} {job_type} jobs did not all succeed within {WAIT:?}; the newest 1,000 by state: {states:?}",
                plan.throughput_jobs
            );
        }
        // Every 100 ms: each scrape counts the queue in the store.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(plan.throughput_jobs as f64 / t0.elapsed().as_secs_f64())
}

/// A throwaway PostgreSQL database, dropped when done.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("tether_bench_{}", std::process::id());
        let db = Self {
            admin_url: admin_url.to_owned(),
            name,
        };
        db.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
            .await?;
        db.psql(&format!("CREATE DATABASE {}", db.name)).await?;
        Ok(db)
    }

    fn url(&self) -> anyhow::Result<String> {
        let (server, _) = self
            .admin_url
            .rsplit_once('/')
            .context("the PostgreSQL URL has no database part")?;
        Ok(format!("{server}/{}", self.name))
    }

    async fn psql(&self, sql: &str) -> anyhow::Result<()> {
        let out = Command::new("psql")
            .args([&self.admin_url, "-qc", sql])
            .output()
            .await
            .context("psql is needed for the PostgreSQL run (apt install postgresql-client)")?;
        anyhow::ensure!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        self.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await
    }
}

/// Runs both backends and the baseline; the report's rows.
pub(crate) async fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let handler = write_handler(dir.path())?;
    let (mut direct_ms, direct_rate) = direct(&handler, plan).await?;
    direct_ms.sort_by(f64::total_cmp);
    let sqlite = through_tether(&handler, &dir.path().join("sqlite"), plan, &[]).await?;
    let db = Database::create(&plan.postgres).await?;
    let url = db.url()?;
    let postgres = through_tether(
        &handler,
        &dir.path().join("postgres"),
        plan,
        &["--store", &url],
    )
    .await;
    db.drop_now().await?;
    let postgres = postgres?;

    let mut rows = Vec::new();
    for (name, m) in [("SQLite", sqlite), ("PostgreSQL", postgres)] {
        let mut ms = m.latency_ms;
        ms.sort_by(f64::total_cmp);
        for (p, per_mille) in [("p50", 500), ("p99", 990)] {
            let (d, t) = (
                percentile(&direct_ms, per_mille),
                percentile(&ms, per_mille),
            );
            rows.push(Row {
                what: format!("job submit-to-start {p}, idle agent, {name} (ms)"),
                direct: format!("{d:.2}"),
                tether: format!("{t:.2}"),
                ratio: format!("+{:.2} ms", t - d),
                target: if p == "p99" { "< 50 ms" } else { "" }.into(),
            });
        }
        rows.push(Row {
            what: format!(
                "jobs per second, {} agents x {PER_AGENT}, {name}",
                plan.agents
            ),
            direct: format!("{direct_rate:.0}"),
            tether: format!("{:.0}", m.jobs_per_second),
            ratio: format!("{:.2}x", m.jobs_per_second / direct_rate),
            // Bounded by starting processes on this machine: the direct
            // column is that bound.
            target: String::new(),
        });
        rows.push(Row {
            what: format!(
                "jobs per second, built-in echo (no process), {} agents x {PER_AGENT}, {name}",
                plan.agents
            ),
            direct: "-".into(),
            tether: format!("{:.0}", m.echo_per_second),
            ratio: "-".into(),
            // The target: dispatch with a no-op handler.
            target: if name == "PostgreSQL" {
                ">= 1000/s"
            } else {
                ""
            }
            .into(),
        });
    }
    Ok(rows)
}
