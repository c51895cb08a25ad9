//! `tether-bench --only scale`: how many agents one control plane carries.
//!
//! Simulates N agents in this process, each a real one as far as the
//! control plane can tell: enrolled with a join token and its own key and
//! CSR, attached over its own mTLS connection (HTTP/2, TLS 1.3), sending a
//! Hello and then a heartbeat with a health sample every interval, and
//! timing each HeartbeatAck; it answers the session's pings. Reports, per N: enrollments per second, the
//! time to attach all, the control plane's CPU over a window of steady
//! heartbeats (percent of one core), its resident memory per agent, and the
//! heartbeat round trip p50/p99.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use tether::{
    client::{self, ControlPlaneAddr},
    join::JoinToken,
    proto::{
        AgentFrame, EnrollRequest, HealthSample, Heartbeat, Hello, Ping, Pong, ProtocolVersion,
        ServerFrame, agent_frame, enrollment_client::EnrollmentClient, server_frame,
        tunnel_client::TunnelClient,
    },
    tls::{self, Trust},
};
use tokio::{sync::mpsc, time::Instant};

use crate::{Row, percentile, procs};

/// The heartbeat interval, as the control plane's default.
const INTERVAL: Duration = Duration::from_secs(10);
/// Steady-state window the CPU is measured over (three intervals).
const WINDOW: Duration = Duration::from_secs(30);
/// Enrollments and attaches in flight at once.
const PARALLEL: usize = 64;
/// Most uses one join token may have.
const TOKEN_USES: usize = 5_000;

/// One enrolled agent's credentials.
struct Enrolled {
    agent_id: String,
    tls: rustls::ClientConfig,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Raises this process's open-file limit to its hard limit (each simulated
/// agent holds a socket); the control plane started after inherits it.
fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

async fn enroll(endpoint: &ControlPlaneAddr, token: &JoinToken) -> anyhow::Result<Enrolled> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let channel = client::channel(endpoint, tls::client_config(&Trust::Pin(token.pin), None)?)?;
    let credential = secrecy::ExposeSecret::expose_secret(&token.enroll_credential()).to_owned();
    let enrolled = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: credential,
            csr_der: csr.der().to_vec(),
            hostname: "scale-sim".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await?
        .into_inner();
    let identity = tls::Identity::from_pem(
        enrolled.certificate_chain_pem.as_bytes(),
        key.serialize_pem().as_bytes(),
    )?;
    let trust = Trust::ca_pem(enrolled.ca_certificate_pem.as_bytes())?;
    Ok(Enrolled {
        agent_id: enrolled.agent_id,
        tls: tls::client_config(&trust, Some(identity))?,
    })
}

/// Heartbeat round trips, microseconds, recorded inside the window.
#[derive(Default)]
struct Stats {
    attached: AtomicUsize,
    acks: AtomicUsize,
    rtt_us: Mutex<Vec<f64>>,
    recording: std::sync::atomic::AtomicBool,
}

/// One simulated agent: Hello, then heartbeats until `until`.
async fn agent(
    endpoint: ControlPlaneAddr,
    e: Enrolled,
    first_beat: Duration,
    until: Instant,
    attached: Arc<tokio::sync::Semaphore>,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let channel = client::channel(&endpoint, e.tls)?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentFrame {
        kind: Some(agent_frame::Kind::Hello(Hello {
            protocol_version: ProtocolVersion::ProtocolVersion1 as i32,
            agent_id: e.agent_id.clone(),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = TunnelClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(f) if matches!(f.kind, Some(server_frame::Kind::Welcome(_))) => {}
        other => bail!("agent {}: no Welcome but {other:?}", e.agent_id),
    }
    stats.attached.fetch_add(1, Ordering::Relaxed);
    attached.add_permits(1);
    let mut next = Instant::now() + first_beat;
    let mut sequence = 0u64;
    let mut sent_at = Instant::now();
    let mut last_rtt_us = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return Ok(()),
            () = tokio::time::sleep_until(next) => {
                sequence += 1;
                sent_at = Instant::now();
                next += INTERVAL;
                let beat = Heartbeat {
                    sequence,
                    agent_time_unix_ms: now_ms(),
                    last_rtt_us,
                    sample: Some(HealthSample {
                        process_cpu_percent: 0.5,
                        host_cpu_percent: 3.0,
                        process_rss_bytes: 20 << 20,
                        host_memory_total_bytes: 8 << 30,
                        host_memory_available_bytes: 6 << 30,
                        workspace_disk_free_bytes: 40 << 30,
                        ..Default::default()
                    }),
                    held_jobs: Vec::new(),
                };
                tx.send(AgentFrame { kind: Some(agent_frame::Kind::Heartbeat(beat)) }).await?;
            }
            frame = inbound.message() => match frame? {
                None => bail!("agent {}: the control plane ended the session", e.agent_id),
                // Answered at once, as a real agent's session does.
                Some(ServerFrame { kind: Some(server_frame::Kind::Ping(Ping { nonce })) }) => {
                    tx.send(AgentFrame { kind: Some(agent_frame::Kind::Pong(Pong { nonce })) })
                        .await?;
                }
                Some(f) => if let Some(server_frame::Kind::HeartbeatAck(a)) = f.kind
                    && a.sequence == sequence
                {
                    let rtt = sent_at.elapsed();
                    last_rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                    if stats.recording.load(Ordering::Relaxed) {
                        stats.acks.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut v) = stats.rtt_us.lock() {
                            v.push(rtt.as_secs_f64() * 1e6);
                        }
                    }
                },
            },
        }
    }
}

/// One run with `n` agents against a fresh control plane.
async fn run_one(dir: &Path, n: usize) -> anyhow::Result<Vec<Row>> {
    let cp_dir = dir.join(format!("cp-{n}"));
    let (cp, grpc) = procs::control_plane(&cp_dir).await?;
    let endpoint_text = format!("https://{grpc}");
    let endpoint = ControlPlaneAddr::parse(&endpoint_text)?;
    let rss0 = procs::rss_of(cp.pid());

    // Enroll, PARALLEL at a time, with tokens of TOKEN_USES uses.
    let mut tokens = Vec::new();
    for _ in 0..n.div_ceil(TOKEN_USES) {
        let out = procs::tetherctl(
            &endpoint_text,
            &cp_dir,
            &[
                "tokens",
                "create",
                "--pool",
                "scale",
                "--max-uses",
                &TOKEN_USES.to_string(),
            ],
        )
        .await?;
        tokens.push(JoinToken::parse(out.trim()).context("the join token tetherctl printed")?);
    }
    let start = Instant::now();
    let enrolled: Vec<Enrolled> = stream::iter(0..n)
        .map(|i| {
            let (endpoint, token) = (endpoint.clone(), &tokens[i / TOKEN_USES]);
            async move { enroll(&endpoint, token).await }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let enroll_rate = n as f64 / start.elapsed().as_secs_f64();

    // Attach every agent; heartbeats spread over the interval.
    let stats = Arc::new(Stats::default());
    let attached = Arc::new(tokio::sync::Semaphore::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(600);
    let mut tasks = Vec::with_capacity(n);
    for (i, e) in enrolled.into_iter().enumerate() {
        let offset = INTERVAL.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(agent(
            endpoint.clone(),
            e,
            offset,
            until,
            attached.clone(),
            stats.clone(),
        )));
        // Bounded attach concurrency: wait while PARALLEL are in progress.
        if i >= PARALLEL {
            let permit = tokio::time::timeout(Duration::from_secs(60), attached.acquire())
                .await
                .context("an agent did not attach within 60 s")??;
            permit.forget();
        }
    }
    // The last PARALLEL (or fewer) attaches.
    let left = u32::try_from(n.min(PARALLEL))?;
    let permits = tokio::time::timeout(Duration::from_secs(60), attached.acquire_many(left))
        .await
        .with_context(|| {
            format!(
                "only {} of {n} agents attached",
                stats.attached.load(Ordering::Relaxed)
            )
        })??;
    permits.forget();
    let attach_time = start.elapsed();

    // One interval to settle (every agent has sent a heartbeat), then the
    // window.
    tokio::time::sleep(INTERVAL).await;
    let cpu0 = cp.cpu_seconds();
    stats.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(WINDOW).await;
    stats.recording.store(false, Ordering::Relaxed);
    let cpu = (cp.cpu_seconds() - cpu0) / WINDOW.as_secs_f64() * 100.0;
    let rss = procs::rss_of(cp.pid()).saturating_sub(rss0) as f64 / n as f64 / 1024.0;
    let acks = stats.acks.load(Ordering::Relaxed);
    let mut rtt = stats.rtt_us.lock().map(|v| v.clone()).unwrap_or_default();
    rtt.sort_by(f64::total_cmp);
    for t in &tasks {
        t.abort();
    }
    drop(cp);
    let expected = n as f64 * WINDOW.as_secs_f64() / INTERVAL.as_secs_f64();
    Ok(vec![
        Row {
            what: format!("{n} agents: enrollments per second ({PARALLEL} at a time)"),
            direct: "-".into(),
            tether: format!("{enroll_rate:.0}"),
            ratio: "-".into(),
            target: String::new(),
        },
        Row {
            what: format!("{n} agents: time to attach all (s)"),
            direct: "-".into(),
            tether: format!("{:.1}", attach_time.as_secs_f64()),
            ratio: "-".into(),
            target: String::new(),
        },
        Row {
            what: format!("{n} agents: control-plane CPU, heartbeats every 10 s (% of one core)"),
            direct: "-".into(),
            tether: format!("{cpu:.1}"),
            ratio: format!(
                "{acks} acks of {expected:.0} expected in {}s",
                WINDOW.as_secs()
            ),
            target: if n >= 10_000 {
                "< 10 %".into()
            } else {
                String::new()
            },
        },
        Row {
            what: format!("{n} agents: control-plane RSS per agent (KiB)"),
            direct: "-".into(),
            tether: format!("{rss:.1}"),
            ratio: "-".into(),
            target: String::new(),
        },
        Row {
            what: format!("{n} agents: heartbeat round trip p50 / p99 (ms)"),
            direct: "-".into(),
            tether: format!(
                "{:.2} / {:.2}",
                percentile(&rtt, 500) / 1000.0,
                percentile(&rtt, 990) / 1000.0
            ),
            ratio: "-".into(),
            target: String::new(),
        },
    ])
}

/// Runs 1,000 then `max` agents.
pub(crate) async fn run(max: usize) -> anyhow::Result<Vec<Row>> {
    let limit = raise_fd_limit()?;
    if limit < u64::try_from(max)?.saturating_add(1_000) {
        bail!("the open-file limit ({limit}) is too low for {max} agents; raise it (ulimit -Hn)");
    }
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for n in [1_000, max] {
        println!("tether-bench scale: {n} simulated agents");
        rows.extend(run_one(dir.path(), n).await?);
    }
    Ok(rows)
}
