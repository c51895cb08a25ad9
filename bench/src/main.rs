//! `tether-bench`: Tether end to end against direct TCP, on loopback, in
//! one run.
//!
//! Starts a target program (in this process), a control plane and an agent
//! (the real release binaries), a gateway port for the target, and measures
//! the same things through the gateway and directly, interleaving the
//! repetitions: one-connection bulk both ways, 64-byte round trips, new
//! connections per second, RSS per idle channel, CPU per GB, and bulk
//! through a relay that adds 50 ms of round trip between agent and control
//! plane. Prints a table with ratios to direct; `--write-docs` replaces the
//! end-to-end section of docs/benchmarks.md.
//!
//! Run: `cargo build --release && target/release/tether-bench`.

#![allow(clippy::print_stdout)] // a report printer

mod deploy;
mod jobs;
mod measure;
mod peers;
mod procs;
mod relay;
mod scale;
mod suite;
mod targets;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;

/// Benchmark Tether end to end against direct TCP.
#[derive(Debug, Parser)]
struct Args {
    /// MiB per bulk transfer.
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// Repetitions of each bulk transfer (interleaved direct / Tether).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Measured 64-byte round trips per path.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Connections for the connection-rate test.
    #[arg(long, default_value_t = 5_000)]
    connections: usize,
    /// Idle channels for the memory test.
    #[arg(long, default_value_t = 1_000)]
    idle: usize,
    /// Replace the end-to-end section of this markdown file with the results.
    #[arg(long)]
    write_docs: Option<PathBuf>,
    /// Run only these measures (comma-separated): bulk, rtt, conn, idle,
    /// far, jobs; or `peers`, the side-by-side suite against ssh -L,
    /// stunnel, socat and rathole (only when asked for).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// MiB per bulk transfer in the peers suite.
    #[arg(long, default_value_t = 1024)]
    peers_bulk_mib: u64,
    /// Simulated agents in the largest scale run (`--only scale`; a run
    /// of 1,000 comes first).
    #[arg(long, default_value_t = 10_000)]
    scale_agents: usize,
    /// Fail when a peer is missing instead of reporting it (the CI smoke
    /// run: scripts/test.sh).
    #[arg(long)]
    require_peers: bool,
    /// MiB per transfer through the 50 ms relay in the peers suite.
    #[arg(long, default_value_t = 256)]
    peers_far_mib: u64,
    /// Jobs timed one at a time for submit-to-start latency.
    #[arg(long, default_value_t = 200)]
    job_latency_runs: usize,
    /// Jobs in the throughput run.
    #[arg(long, default_value_t = 5_000)]
    jobs: usize,
    /// Agents in the jobs throughput run.
    #[arg(long, default_value_t = 20)]
    job_agents: usize,
    /// PostgreSQL server for the jobs run on PostgreSQL (a throwaway
    /// database is created there and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
}

impl Args {
    fn runs(&self, measure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == measure)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Nearest-rank percentile; `per_mille` 500 is the median, 990 the p99.
fn percentile(sorted_us: &[f64], per_mille: usize) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = (sorted_us.len() - 1) * per_mille.min(1000) / 1000;
    sorted_us[i]
}

fn micros(v: &[Duration]) -> Vec<f64> {
    let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    us
}

/// One row of the report.
struct Row {
    what: String,
    direct: String,
    tether: String,
    ratio: String,
    target: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let only_jobs = !args.only.is_empty()
        && args
            .only
            .iter()
            .all(|m| m == "jobs" || m == "peers" || m == "scale");
    let mut sections = Vec::new();
    if args.only.iter().any(|m| m == "peers") {
        let section = suite::run(&suite::Plan {
            bulk_mib: args.peers_bulk_mib,
            reps: args.reps,
            round_trips: args.round_trips,
            connections: args.connections.min(2_000),
            idle: args.idle,
            far_mib: args.peers_far_mib,
            require_peers: args.require_peers,
        })
        .await?;
        println!("\n{section}");
        let (about, table) = section
            .split_once("\n| measure")
            .map_or((section.as_str(), ""), |(a, t)| (a, t));
        sections.push((
            "tether-bench-peers",
            about.trim_end().to_owned(),
            format!("| measure{table}"),
        ));
    }
    if args.only.iter().any(|m| m == "scale") {
        let table = render(&scale::run(args.scale_agents).await?);
        println!("\n{table}");
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let about = format!(
            "Command: `cargo build --release && target/release/tether-bench --only scale --write-docs docs/benchmarks.md`\n\n\
             Simulated agents in the benchmark process, each enrolled with its own key and CSR and attached over its own \
             mTLS connection, sending a heartbeat with a health sample every 10 s (spread evenly); the control plane on \
             its defaults (SQLite). CPU over 30 s of steady heartbeats after one interval to settle. Machine: {cpus} CPUs, \
             loopback; the simulator shares the CPUs with the control plane."
        );
        sections.push(("tether-bench-scale", about, table));
    }
    if !only_jobs {
        let table = render(&tunnel(&args).await?);
        println!("\n{table}");
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let about = format!(
            "Command: `cargo build --release && target/release/tether-bench --write-docs docs/benchmarks.md`\n\n\
             Parameters: {} MiB per bulk transfer, median of {} interleaved repetitions; {} measured round trips \
             after 1,000 unmeasured; {} connections, 16 at a time; {} idle channels. Machine: {cpus} CPUs, loopback.",
            args.bulk_mib, args.reps, args.round_trips, args.connections, args.idle
        );
        sections.push(("tether-bench", about, table));
    }
    if args.runs("jobs") {
        println!(
            "tether-bench jobs: {} timed one at a time, {} on {} agents, SQLite and PostgreSQL",
            args.job_latency_runs, args.jobs, args.job_agents
        );
        let rows = jobs::run(&jobs::Plan {
            latency_jobs: args.job_latency_runs,
            throughput_jobs: args.jobs,
            agents: args.job_agents,
            postgres: args.postgres.clone(),
        })
        .await?;
        let table = render(&rows);
        println!("\n{table}");
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let about = format!(
            "Command: `cargo build --release && target/release/tether-bench --only jobs --write-docs docs/benchmarks.md`\n\n\
             Parameters: submit-to-start over {} jobs submitted one at a time to one idle agent (after 20 unmeasured); \
             throughput of {} jobs from {} concurrent callers on {} agents running 4 each; the handler is a shell script \
             that records its start time. Direct: the same handler started by this process, one at a time and {} at once. \
             Machine: {cpus} CPUs, loopback, PostgreSQL on 127.0.0.1.",
            args.job_latency_runs,
            args.jobs,
            jobs::SUBMITTERS,
            args.job_agents,
            args.job_agents * jobs::PER_AGENT
        );
        sections.push(("tether-bench-jobs", about, table));
    }
    if let Some(path) = &args.write_docs {
        for (marker, about, table) in &sections {
            write_docs(path, marker, about, table)?;
        }
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The tunnel measures: direct TCP against the gateway.
async fn tunnel(args: &Args) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let target = targets::start().await?;
    let deploy::Deployment {
        cp,
        agent,
        far_agent: _far_agent,
        gateway,
        far_gateway,
        ..
    } = deploy::deploy(dir.path(), target).await?;

    println!(
        "tether-bench: {} MiB bulk x {} reps, {} round trips, {} connections, {} idle channels",
        args.bulk_mib, args.reps, args.round_trips, args.connections, args.idle
    );
    let bench = Bench {
        cp,
        agent,
        target,
        gateway,
        far_gateway,
    };
    let mut rows = Vec::new();
    // Memory first, while the processes have not yet grown their heaps
    // for bulk transfers (freed memory would hide the channels' share).
    if args.runs("idle") {
        rows.push(bench.idle(args).await?);
    }
    if args.runs("bulk") {
        rows.extend(bench.bulk(args).await?);
    }
    if args.runs("rtt") {
        rows.extend(bench.round_trips(args).await?);
    }
    if args.runs("conn") {
        rows.push(bench.connections(args).await?);
    }
    if args.runs("far") {
        rows.push(bench.far(args).await?);
    }
    Ok(rows)
}

/// The processes and addresses every measure uses.
struct Bench {
    cp: procs::Proc,
    agent: procs::Proc,
    target: SocketAddr,
    gateway: SocketAddr,
    far_gateway: SocketAddr,
}

impl Bench {
    fn bytes(args: &Args) -> u64 {
        args.bulk_mib * 1024 * 1024
    }

    async fn bulk(&self, args: &Args) -> anyhow::Result<Vec<Row>> {
        let (cp, agent, target, gateway) = (&self.cp, &self.agent, self.target, self.gateway);
        let bytes = Self::bytes(args);
        let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
        let mut rows = Vec::new();
        // Bulk, interleaved; CPU of the tunnel processes during Tether's runs.
        let (mut up_d, mut up_t, mut down_d, mut down_t) = (vec![], vec![], vec![], vec![]);
        let mut tunnel_cpu = 0.0;
        let mut tunnel_bytes = 0u64;
        for _ in 0..args.reps {
            up_d.push(mbps(measure::upload(target, bytes).await?));
            let cpu0 = cp.cpu_seconds() + agent.cpu_seconds();
            up_t.push(mbps(measure::upload(gateway, bytes).await?));
            down_d.push(mbps(measure::download(target, bytes).await?));
            down_t.push(mbps(measure::download(gateway, bytes).await?));
            tunnel_cpu += cp.cpu_seconds() + agent.cpu_seconds() - cpu0;
            tunnel_bytes += 2 * bytes;
        }
        for (what, d, t) in [
            ("bulk upload, 1 connection (MB/s)", up_d, up_t),
            ("bulk download, 1 connection (MB/s)", down_d, down_t),
        ] {
            let (d, t) = (median(d), median(t));
            rows.push(Row {
                what: what.into(),
                direct: format!("{d:.0}"),
                tether: format!("{t:.0}"),
                ratio: format!("{:.2}x", t / d),
                target: ">= 0.25x".into(),
            });
        }
        let cpu_per_gb = tunnel_cpu / (tunnel_bytes as f64 / 1e9);
        rows.push(Row {
            what: "tunnel CPU seconds per GB (agent + control plane)".into(),
            direct: "-".into(),
            tether: format!("{cpu_per_gb:.2}"),
            ratio: "-".into(),
            target: String::new(),
        });

        Ok(rows)
    }

    async fn round_trips(&self, args: &Args) -> anyhow::Result<Vec<Row>> {
        let (target, gateway) = (self.target, self.gateway);
        let mut rows = Vec::new();
        // Round trips.
        let rt_d = micros(&measure::round_trips(target, 1_000, args.round_trips).await?);
        let rt_t = micros(&measure::round_trips(gateway, 1_000, args.round_trips).await?);
        for (name, p) in [("p50", 500), ("p99", 990)] {
            let (d, t) = (percentile(&rt_d, p), percentile(&rt_t, p));
            let target = if name == "p50" { "added <= 60 us" } else { "" };
            rows.push(Row {
                what: format!("64-byte round trip {name} (us)"),
                direct: format!("{d:.1}"),
                tether: format!("{t:.1}"),
                ratio: format!("+{:.1} us", t - d),
                target: target.into(),
            });
        }

        Ok(rows)
    }

    async fn connections(&self, args: &Args) -> anyhow::Result<Row> {
        let (target, gateway) = (self.target, self.gateway);
        // New connections per second.
        let c_d = measure::connection_rate(target, args.connections, 16).await?;
        let c_t = measure::connection_rate(gateway, args.connections, 16).await?;
        Ok(Row {
            what: "new connections per second (16 at a time)".into(),
            direct: format!("{c_d:.0}"),
            tether: format!("{c_t:.0}"),
            ratio: format!("{:.2}x", c_t / c_d),
            target: ">= 5000/s".into(),
        })
    }

    async fn idle(&self, args: &Args) -> anyhow::Result<Row> {
        let (cp, agent, gateway) = (&self.cp, &self.agent, self.gateway);
        // Memory per idle channel (agent + control plane).
        let (cp0, ag0) = (cp.rss(), agent.rss());
        let held = measure::idle(gateway, args.idle).await?;
        let (cp1, ag1) = (cp.rss(), agent.rss());
        let kib = |a: u64, b: u64| b.saturating_sub(a) as f64 / args.idle as f64 / 1024.0;
        let row = Row {
            what: format!("RSS per idle channel, {} open (KiB)", args.idle),
            direct: "-".into(),
            tether: format!("{:.1}", kib(cp0 + ag0, cp1 + ag1)),
            ratio: format!(
                "agent {:.1} + control plane {:.1}",
                kib(ag0, ag1),
                kib(cp0, cp1)
            ),
            target: "<= 8 KiB".into(),
        };
        drop(held);
        Ok(row)
    }

    async fn far(&self, args: &Args) -> anyhow::Result<Row> {
        let far_gateway = self.far_gateway;
        let bytes = Self::bytes(args);
        let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
        // Over 50 ms of round trip between agent and control plane: warm up,
        // then measure (windows must have grown).
        measure::download(far_gateway, 64 * 1024 * 1024).await?;
        let mut far = vec![];
        for _ in 0..args.reps {
            far.push(mbps(measure::download(far_gateway, bytes).await?));
        }
        let far = median(far);
        Ok(Row {
            what: "bulk download, agent 50 ms away (MB/s)".into(),
            direct: "-".into(),
            tether: format!("{far:.0}"),
            ratio: "-".into(),
            target: ">= 100 MB/s".into(),
        })
    }
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| measure | direct | Tether | Tether vs direct | target |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.direct, r.tether, r.ratio, r.target
        ));
    }
    out
}

/// Replaces the text between `<!-- {marker}:start -->` and
/// `<!-- {marker}:end -->` in `path`.
fn write_docs(
    path: &std::path::Path,
    marker: &str,
    about: &str,
    table: &str,
) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- {marker}:start -->"),
        format!("<!-- {marker}:end -->"),
    );
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (head, rest) = doc
        .split_once(&start)
        .with_context(|| format!("no {start} marker in {}", path.display()))?;
    let (_, tail) = rest
        .split_once(&end)
        .with_context(|| format!("no {end} marker in {}", path.display()))?;
    std::fs::write(
        path,
        format!("{head}{start}\n{about}\n\n{table}{end}{tail}"),
    )?;
    Ok(())
}
