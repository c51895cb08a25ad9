//! `tether-bench --only peers`: Tether side by side with the peer tunnels
//! users already run, on the same machine, against the same target, in the
//! same run, repetitions interleaved across paths.
//!
//! Paths: direct; Tether through a gateway port; Tether through the Dial SDK
//! (an in-process forwarder in this program); the tonic floor (the least a
//! tunnel over tonic does, `peers::floor`, not a peer); `ssh -L`; stunnel;
//! socat; rathole (see `peers`). Measures: one-connection bulk up and down, eight
//! connections at once, 64-byte round trips (p50, p99, p99.9) with and
//! without a busy spinner on one core, new connections per second, CPU
//! seconds per GB of the tunnel's processes, resident memory idle and with
//! open idle connections, and one-connection download with 50 ms of round
//! trip between the tunnel's two ends (the user-space delay relay).

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tether::dial::{Credentials, Destination, Dialer};
use tokio::net::TcpListener;

use crate::{deploy, measure, micros, peers, percentile, procs, relay, targets};

/// What to run.
pub(crate) struct Plan {
    pub(crate) bulk_mib: u64,
    pub(crate) reps: usize,
    pub(crate) round_trips: usize,
    pub(crate) connections: usize,
    pub(crate) idle: usize,
    pub(crate) far_mib: u64,
    /// A missing peer is an error, not a note.
    pub(crate) require_peers: bool,
}

/// One way from a client to the target.
struct Route {
    name: String,
    entry: SocketAddr,
    /// Root pids of the tunnel's processes (CPU and memory are summed over
    /// them and their children); empty for direct.
    pids: Vec<u32>,
    /// The same tunnel with the relay between its ends.
    far: Option<SocketAddr>,
    /// Whether it is a peer (for "best peer").
    peer: bool,
}

impl Route {
    /// The tunnel's processes and their children, as they are now.
    fn processes(&self) -> impl Iterator<Item = u32> + '_ {
        self.pids.iter().flat_map(|p| procs::tree(*p))
    }

    fn cpu(&self) -> f64 {
        self.processes().map(procs::cpu_of).sum()
    }

    fn rss(&self) -> u64 {
        self.processes().map(procs::rss_of).sum()
    }
}

/// A measured value per path (None: not measured for that path).
struct Line {
    what: String,
    unit_better: Better,
    values: Vec<Option<f64>>,
}

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// A Dial SDK forwarder: each local connection becomes one `Dial.Open`.
async fn dial_forwarder(
    dialer: Arc<Dialer>,
    pool: &str,
    target: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pool = pool.to_owned();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let dialer = dialer.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let dest = Destination::pool(pool, target.ip().to_string(), target.port());
                if let Ok(mut stream) = dialer.dial(dest).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Checks that a path carries an echo before it is measured.
async fn works(entry: SocketAddr) -> anyhow::Result<()> {
    // A peer may bind its public port a moment after saying it is ready
    // (rathole binds it once its client attached): a few tries, bounded.
    let mut last = None;
    for _ in 0..50 {
        match measure::round_trips(entry, 1, 1).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
}

/// Stands every path up; returns them, what is missing and the processes
/// to keep alive.
async fn paths(
    dir: &Path,
    target: SocketAddr,
    require_peers: bool,
) -> anyhow::Result<(Vec<Route>, Vec<String>, Vec<Box<dyn std::any::Any + Send>>)> {
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut out = vec![Route {
        name: "direct".into(),
        entry: target,
        pids: vec![],
        far: None,
        peer: false,
    }];

    // Tether: a control plane, a near agent and a far agent (behind the relay).
    let direct = async |a: SocketAddr| anyhow::Ok(a);
    let delayed = async |a: SocketAddr| relay::start(a, deploy::ONE_WAY).await;
    let tether = deploy::deploy(dir, target).await?;
    let tether_pids = vec![tether.cp.pid(), tether.agent.pid()];
    let credentials = Credentials::from_files(
        tether.cp_dir.join("ca.pem"),
        tether.cp_dir.join("admin.key"),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dialer = Arc::new(
        Dialer::connect(&tether.endpoint, &credentials).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let sdk = dial_forwarder(dialer, "near", target).await?;
    out.push(Route {
        name: "Tether".into(),
        entry: tether.gateway,
        pids: tether_pids.clone(),
        far: Some(tether.far_gateway),
        peer: false,
    });
    out.push(Route {
        name: "Tether (Dial SDK)".into(),
        entry: sdk,
        pids: tether_pids,
        far: None,
        peer: false,
    });
    keep.push(Box::new(tether));

    // The floor: tonic alone, without Tether's layers (not a peer).
    let floor = peers::floor(&dir.join("peers").join("near"), target, direct).await?;
    let floor_far = peers::floor(&dir.join("peers").join("far"), target, delayed).await?;
    works(floor_far.entry)
        .await
        .context("the delayed floor relay carries no echo")?;
    out.push(Route {
        name: floor.name.into(),
        entry: floor.entry,
        pids: floor.pids(),
        far: Some(floor_far.entry),
        peer: false,
    });
    keep.push(Box::new((floor, floor_far)));

    let mut missing = Vec::new();
    for name in ["ssh -L", "stunnel", "socat", "rathole"] {
        let d = dir.join("peers");
        let near_far = async {
            let pair = match name {
                "ssh -L" => (
                    peers::ssh(&d.join("near"), target, direct).await?,
                    peers::ssh(&d.join("far"), target, delayed).await?,
                ),
                "stunnel" => (
                    peers::stunnel(&d.join("near"), target, direct).await?,
                    peers::stunnel(&d.join("far"), target, delayed).await?,
                ),
                "socat" => (
                    peers::socat(target, direct).await?,
                    peers::socat(target, delayed).await?,
                ),
                _ => (
                    peers::rathole(&d.join("near"), target, direct).await?,
                    peers::rathole(&d.join("far"), target, delayed).await?,
                ),
            };
            works(pair.0.entry)
                .await
                .context("the path carries no echo")?;
            works(pair.1.entry)
                .await
                .context("the delayed path carries no echo")?;
            anyhow::Ok(pair)
        };
        match near_far.await {
            Ok((near, far)) => {
                println!(
                    "tether-bench: {} at {}, delayed at {}",
                    near.name, near.entry, far.entry
                );
                out.push(Route {
                    name: name.into(),
                    entry: near.entry,
                    pids: near.pids(),
                    far: Some(far.entry),
                    peer: true,
                });
                keep.push(Box::new((near, far)));
            }
            Err(e) if require_peers => {
                return Err(e.context(format!(
                    "{name} is missing (--require-peers); install it with scripts/install-bench-peers.sh"
                )));
            }
            Err(e) => {
                println!("tether-bench: {name} is missing: {e:#}");
                missing.push(
                    format!("{name}: {e:#}")
                        .lines()
                        .next()
                        .unwrap_or(name)
                        .to_owned(),
                );
            }
        }
    }
    for p in &out {
        works(p.entry)
            .await
            .with_context(|| format!("{} carries no echo", p.name))?;
    }
    Ok((out, missing, keep))
}

/// Runs the suite; returns the markdown section (without markers).
pub(crate) async fn run(plan: &Plan) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let target = targets::start().await?;
    let (paths, missing, _keep) = paths(dir.path(), target, plan.require_peers).await?;
    let names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    println!("tether-bench peers: {}", names.join(", "));
    let n = paths.len();
    let mut lines = Vec::new();
    let bytes = plan.bulk_mib * 1024 * 1024;
    let mbps = |b: u64, d: Duration| b as f64 / d.as_secs_f64() / 1e6;

    // Memory first, before bulk transfers grow heaps.
    let idle_rss: Vec<Option<f64>> = paths
        .iter()
        .map(|p| (!p.pids.is_empty()).then(|| p.rss() as f64 / 1048576.0))
        .collect();
    let mut held_rss = vec![None; n];
    for (i, p) in paths.iter().enumerate() {
        if p.pids.is_empty() || p.name.contains("SDK") {
            continue;
        }
        let held = measure::idle(p.entry, plan.idle)
            .await
            .with_context(|| format!("{}: idle connections", p.name))?;
        held_rss[i] = Some(p.rss() as f64 / 1048576.0);
        drop(held);
    }
    lines.push(Line {
        what: "RSS idle, tunnel processes (MiB)".into(),
        unit_better: Better::Lower,
        values: idle_rss,
    });
    lines.push(Line {
        what: format!("RSS with {} idle connections open (MiB)", plan.idle),
        unit_better: Better::Lower,
        values: held_rss,
    });

    // Bulk, one connection each way, interleaved; CPU during them.
    let (mut up, mut down, mut cpu, mut moved) = (
        vec![vec![]; n],
        vec![vec![]; n],
        vec![0.0; n],
        vec![0u64; n],
    );
    for rep in 0..plan.reps {
        println!(
            "tether-bench peers: bulk repetition {}/{}",
            rep + 1,
            plan.reps
        );
        for (i, p) in paths.iter().enumerate() {
            let c0 = p.cpu();
            up[i].push(mbps(
                bytes,
                measure::upload(p.entry, bytes)
                    .await
                    .with_context(|| format!("{}: upload", p.name))?,
            ));
            down[i].push(mbps(
                bytes,
                measure::download(p.entry, bytes)
                    .await
                    .with_context(|| format!("{}: download", p.name))?,
            ));
            cpu[i] += p.cpu() - c0;
            moved[i] += 2 * bytes;
        }
    }
    lines.push(Line {
        what: format!("bulk upload, 1 connection, {} MiB (MB/s)", plan.bulk_mib),
        unit_better: Better::Higher,
        values: up.into_iter().map(|v| Some(crate::median(v))).collect(),
    });
    lines.push(Line {
        what: format!("bulk download, 1 connection, {} MiB (MB/s)", plan.bulk_mib),
        unit_better: Better::Higher,
        values: down.into_iter().map(|v| Some(crate::median(v))).collect(),
    });

    // Eight connections at once, downloads, aggregate.
    let mut par = vec![vec![]; n];
    for _ in 0..plan.reps {
        for (i, p) in paths.iter().enumerate() {
            let each = bytes / 8;
            let c0 = p.cpu();
            let start = tokio::time::Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|_| tokio::spawn(measure::download(p.entry, each)))
                .collect();
            for t in tasks {
                t.await?
                    .with_context(|| format!("{}: parallel download", p.name))?;
            }
            par[i].push(mbps(each * 8, start.elapsed()));
            cpu[i] += p.cpu() - c0;
            moved[i] += each * 8;
        }
    }
    lines.push(Line {
        what: "bulk download, 8 connections at once (MB/s)".into(),
        unit_better: Better::Higher,
        values: par.into_iter().map(|v| Some(crate::median(v))).collect(),
    });
    lines.push(Line {
        what: "tunnel CPU seconds per GB moved".into(),
        unit_better: Better::Lower,
        values: paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (!p.pids.is_empty() && !p.name.contains("SDK"))
                    .then(|| cpu[i] / (moved[i] as f64 / 1e9))
            })
            .collect(),
    });

    // Round trips, without and with a spinner keeping one core awake.
    for spin in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = spin.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        });
        let mut rt: Vec<Vec<f64>> = Vec::new();
        for p in &paths {
            rt.push(micros(
                &measure::round_trips(p.entry, 1_000, plan.round_trips)
                    .await
                    .with_context(|| format!("{}: round trips", p.name))?,
            ));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = spinner {
            let _ = s.join();
        }
        let suffix = if spin { ", busy spinner" } else { "" };
        for (name, pm) in [("p50", 500), ("p99", 990), ("p99.9", 999)] {
            lines.push(Line {
                what: format!("64-byte round trip {name}{suffix} (us)"),
                unit_better: Better::Lower,
                values: rt.iter().map(|v| Some(percentile(v, pm))).collect(),
            });
        }
    }

    // New connections per second.
    let mut rate = Vec::new();
    for p in &paths {
        rate.push(Some(
            measure::connection_rate(p.entry, plan.connections, 16)
                .await
                .with_context(|| format!("{}: connections", p.name))?,
        ));
    }
    lines.push(Line {
        what: "new connections per second (16 at a time)".into(),
        unit_better: Better::Higher,
        values: rate,
    });

    // 50 ms between the tunnel's ends.
    let far_bytes = plan.far_mib * 1024 * 1024;
    let mut far = Vec::new();
    for p in &paths {
        far.push(match p.far {
            None => None,
            Some(entry) => {
                // A warm-up of the same size: windows must have grown.
                measure::download(entry, far_bytes)
                    .await
                    .with_context(|| format!("{}: far warm-up", p.name))?;
                Some(mbps(
                    far_bytes,
                    measure::download(entry, far_bytes)
                        .await
                        .with_context(|| format!("{}: far download", p.name))?,
                ))
            }
        });
    }
    lines.push(Line {
        what: format!(
            "bulk download, ends 50 ms apart, {} MiB (MB/s)",
            plan.far_mib
        ),
        unit_better: Better::Higher,
        values: far,
    });

    Ok(render(&paths, &lines, &missing, plan).await)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

async fn render(paths: &[Route], lines: &[Line], missing: &[String], plan: &Plan) -> String {
    let tether = paths.iter().position(|p| p.name == "Tether");
    let floor = paths.iter().position(|p| p.name == "tonic floor");
    let mut out = String::from("| measure |");
    for p in paths {
        out.push_str(&format!(" {} |", p.name));
    }
    out.push_str(" Tether / direct | Tether / tonic floor | Tether / best peer |\n| --- |");
    for _ in paths {
        out.push_str(" --- |");
    }
    out.push_str(" --- | --- | --- |\n");
    for l in lines {
        out.push_str(&format!("| {} |", l.what));
        for v in &l.values {
            out.push_str(&format!(" {} |", fmt(*v)));
        }
        let t = tether.and_then(|i| l.values[i]);
        let d = l.values[0];
        let best = paths
            .iter()
            .zip(&l.values)
            .filter(|(p, _)| p.peer)
            .filter_map(|(_, v)| *v)
            .reduce(|a, b| match l.unit_better {
                Better::Higher => a.max(b),
                Better::Lower => a.min(b),
            });
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let f = floor.and_then(|i| l.values[i]);
        out.push_str(&format!(
            " {} | {} | {} |\n",
            ratio(t, d),
            ratio(t, f),
            ratio(t, best)
        ));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut versions = vec![format!("Tether {}", env!("CARGO_PKG_VERSION"))];
    for (name, v) in peers::versions().await {
        versions.push(match v {
            Ok(v) => v,
            Err(e) => format!("{name}: {e}"),
        });
    }
    let mut about = format!(
        "Command: `cargo build --release && sudo scripts/install-bench-peers.sh && target/release/tether-bench --only peers --write-docs docs/benchmarks.md`\n\n\
         Run {date} on {cpus} CPUs ({cpu}), Linux {}, loopback. Versions: {}.\n\n\
         Parameters: {} MiB per bulk transfer, median of {} interleaved repetitions; {} round trips after 1,000 unmeasured; \
         {} connections 16 at a time; {} idle connections; {} MiB through the 50 ms relay after as much again of warm-up. \
         CPU and memory are summed over each tunnel's processes and their children (Tether: control plane + agent; \
         the Dial SDK forwarder runs inside the benchmark, so its CPU and memory are not counted). \
         The tonic floor is not a peer: `tether-bench-floor`, one gRPC stream per connection over tonic with Tether's \
         transport settings and nothing else (bench/src/floor).\n",
        kernel.trim(),
        versions.join(", "),
        plan.bulk_mib,
        plan.reps,
        plan.round_trips,
        plan.connections,
        plan.idle,
        plan.far_mib
    );
    for m in missing {
        about.push_str(&format!("\nMissing: {m}\n"));
    }
    format!("{about}\n{out}")
}
