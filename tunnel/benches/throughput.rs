//! Throughput of the tunnel in memory, against `tokio::io::duplex` measured
//! in the same run: `cargo bench -p tether-tunnel`.
//!
//! Cases (each moves bytes one way, control plane → agent, and waits until
//! the reader has every byte):
//! - `raw_duplex`: a plain `tokio::io::duplex` copy, the baseline;
//! - `one_channel`: one channel through two connected sessions;
//! - `64_channels`: 64 channels at once, the same total;
//! - `one_channel_50ms_rtt`: one channel over a link that delays every frame
//!   by 25 ms each way (real tokio time), after a warm-up that lets window
//!   auto-tuning grow the channel's window.
//!
//! Criterion reports each case; at the end a table gives MB/s and the ratio
//! to raw duplex from the same run (median of the samples).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark binary

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use criterion::{Criterion, Throughput};
use tether_tunnel::{
    AgentWire, Config, ServerWire, Target,
    driver::Channel,
    memory::{self, Endpoint},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    runtime::Runtime,
    sync::watch,
};

/// Bytes per iteration of the in-memory cases.
const BYTES: u64 = 64 * 1024 * 1024;
/// Bytes per iteration over the delayed link (several windows' worth).
const DELAYED_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes moved before timing starts on the delayed link.
const WARM_UP_BYTES: u64 = 128 * 1024 * 1024;
/// Write size, the same for every case.
const CHUNK: usize = 64 * 1024;

/// Measured (bytes, seconds) per case, for the ratio table.
type Samples = Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>;

fn record(samples: &Samples, case: &'static str, bytes: u64, elapsed: Duration) {
    let mbps = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    samples.lock().unwrap().entry(case).or_default().push(mbps);
}

/// One end of a set of channels, whose readers count what arrives.
struct Sink {
    writers: Vec<Channel<ServerWire>>,
    received: watch::Receiver<u64>,
    _cp: Endpoint<ServerWire>,
}

impl Sink {
    async fn new(channels: usize, one_way: Duration) -> Self {
        let (cp, mut agent) = memory::pair(Config::default(), one_way);
        let (tx, received) = watch::channel(0u64);
        let tx = Arc::new(tx);
        // Readers end when the session ends with the benchmark.
        tokio::spawn(async move {
            let _connection = agent.connection;
            while let Some(incoming) = agent.incoming.recv().await {
                let mut ch: Channel<AgentWire> = incoming.accept().unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(n) = ch.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tx.send_modify(|total| *total += n as u64);
                    }
                });
            }
        });
        let mut writers = Vec::with_capacity(channels);
        for i in 0..channels {
            let port = u16::try_from(i + 1).unwrap();
            writers.push(
                cp.connection
                    .open(Target::new("bench", port))
                    .await
                    .unwrap(),
            );
        }
        Self {
            writers,
            received,
            _cp: cp,
        }
    }

    /// Writes `bytes` spread over every channel and waits until all arrived.
    async fn push(&mut self, bytes: u64) {
        let start = *self.received.borrow();
        let per_channel = bytes / self.writers.len() as u64;
        let chunk = vec![0x5au8; CHUNK];
        let writes = self.writers.iter_mut().map(|w| {
            let chunk = &chunk;
            async move {
                let mut left = per_channel;
                while left > 0 {
                    let n = usize::try_from(left.min(CHUNK as u64)).unwrap();
                    w.write_all(&chunk[..n]).await.unwrap();
                    left -= n as u64;
                }
            }
        });
        futures_util::future::join_all(writes).await;
        let want = start + per_channel * self.writers.len() as u64;
        self.received
            .wait_for(|&total| total >= want)
            .await
            .unwrap();
    }
}

async fn raw_duplex(bytes: u64) {
    let (mut a, mut b) = tokio::io::duplex(256 * 1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        while total < bytes {
            total += b.read(&mut buf).await.unwrap() as u64;
        }
    });
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap();
        a.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    reader.await.unwrap();
}

fn bench(c: &mut Criterion, rt: &Runtime, samples: &Samples) {
    let mut group = c.benchmark_group("tunnel");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(BYTES));

    group.bench_function("raw_duplex", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let samples = samples.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = tokio::time::Instant::now();
                    raw_duplex(BYTES).await;
                    let elapsed = start.elapsed();
                    record(&samples, "raw_duplex", BYTES, elapsed);
                    total += elapsed;
                }
                total
            }
        });
    });

    for (case, channels) in [("one_channel", 1usize), ("64_channels", 64)] {
        let sink = Arc::new(tokio::sync::Mutex::new(
            rt.block_on(Sink::new(channels, Duration::ZERO)),
        ));
        group.bench_function(case, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let samples = samples.clone();
                let sink = sink.clone();
                async move {
                    let mut sink = sink.lock().await;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = tokio::time::Instant::now();
                        sink.push(BYTES).await;
                        let elapsed = start.elapsed();
                        record(&samples, case, BYTES, elapsed);
                        total += elapsed;
                    }
                    total
                }
            });
        });
    }

    group.throughput(Throughput::Bytes(DELAYED_BYTES));
    group.measurement_time(Duration::from_secs(20));
    let delayed = rt.block_on(async {
        let mut sink = Sink::new(1, Duration::from_millis(25)).await;
        sink.push(WARM_UP_BYTES).await;
        Arc::new(tokio::sync::Mutex::new(sink))
    });
    group.bench_function("one_channel_50ms_rtt", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let samples = samples.clone();
            let sink = delayed.clone();
            async move {
                let mut sink = sink.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = tokio::time::Instant::now();
                    sink.push(DELAYED_BYTES).await;
                    let elapsed = start.elapsed();
                    record(&samples, "one_channel_50ms_rtt", DELAYED_BYTES, elapsed);
                    total += elapsed;
                }
                total
            }
        });
    });
    group.finish();
    round_trip(c, rt);
}

/// 64-byte round trips: a duplex echo against one channel whose agent end
/// echoes. Latency, not throughput: the in-memory tunnel's share of an
/// end-to-end round trip.
fn round_trip(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("round_trip_64b");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    let duplex = rt.block_on(async {
        let (a, mut z) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while z.read_exact(&mut buf).await.is_ok() {
                if z.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        Arc::new(tokio::sync::Mutex::new(a))
    });
    group.bench_function("raw_duplex", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let a = duplex.clone();
            async move { ping_pong(&mut *a.lock().await, iters).await }
        });
    });
    let (channel, _cp) = rt.block_on(async {
        let (cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);
        tokio::spawn(async move {
            let _connection = agent.connection;
            while let Some(incoming) = agent.incoming.recv().await {
                let mut ch: Channel<AgentWire> = incoming.accept().unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while ch.read_exact(&mut buf).await.is_ok() {
                        if ch.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let ch = cp.connection.open(Target::new("echo", 7)).await.unwrap();
        (Arc::new(tokio::sync::Mutex::new(ch)), cp)
    });
    group.bench_function("one_channel", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let ch = channel.clone();
            async move { ping_pong(&mut *ch.lock().await, iters).await }
        });
    });
    group.finish();
}

async fn ping_pong<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    iters: u64,
) -> Duration {
    let mut buf = [7u8; 64];
    let start = tokio::time::Instant::now();
    for _ in 0..iters {
        s.write_all(&buf).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
    }
    start.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples: Samples = Arc::default();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rt, &samples);
    c.final_summary();

    let mut samples = samples.lock().unwrap();
    let Some(raw) = samples.get_mut("raw_duplex").map(|v| median(v)) else {
        return; // a filtered run without the baseline: no ratios to print
    };
    println!("\ncase                     median MB/s   ratio to raw_duplex   target");
    for (case, target) in [
        ("raw_duplex", ""),
        ("one_channel", ">= 0.6x"),
        ("64_channels", ">= 0.5x"),
        ("one_channel_50ms_rtt", ">= 100 MB/s"),
    ] {
        if let Some(v) = samples.get_mut(case) {
            let m = median(v);
            println!("{case:<24} {m:>11.0}   {:>18.2}x   {target}", m / raw);
        }
    }
}
