//! Micro-benchmarks of the multiplexer's hot paths, each against a baseline
//! measured in the same run: `cargo bench -p tether-tunnel --bench hot_paths`.
//!
//! - `codec_*`: one `ChannelData` frame from the control plane's session to
//!   the agent's: `ServerWire::encode`, prost encoding into a buffer (what
//!   tonic does with each message), prost decoding of the buffer and
//!   `AgentWire::decode`. Baseline `copy_*`: one copy of the payload into a
//!   buffer, which any encoder of a separate message must make.
//! - `scheduler_64_channels`: 64 channels with 32 KiB queued each, sent as
//!   frames by `Session::poll_transmit` (deficit round-robin, credit,
//!   framing), with the credit returned as the peer would. Baseline
//!   `round_robin_64`: the same frames cut off 64 queues rotated in a
//!   `VecDeque`, with a credit counter per queue.
//!
//! Criterion reports each case; at the end a table gives nanoseconds per
//! frame and the ratio to the baseline (median of the samples).

// A benchmark binary: it times plain code (no tokio) with the real clock.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use std::{
    collections::{BTreeMap, VecDeque},
    hint::black_box,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use criterion::Criterion;
use prost::Message;
use tether::proto::ServerFrame;
use tether_tunnel::{
    AgentWire, ChannelId, Config, DATA_FRAME_OVERHEAD, Event, Frame, ServerWire, Session, Side,
    Target, Transmit, Wire,
};

/// Channels with data queued in the scheduler cases.
const CHANNELS: usize = 64;
/// One full data frame (the default `max_data_frame`).
const FRAME: usize = 32 * 1024;

/// Nanoseconds per frame, per case.
type Samples = Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>;

/// Times `iters` runs of `f`, each handling `per_run` frames.
fn timed(
    samples: &Samples,
    case: &'static str,
    iters: u64,
    per_run: usize,
    mut f: impl FnMut(),
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let elapsed = start.elapsed();
    let per_frame = elapsed.as_nanos() as f64 / (iters as f64 * per_run as f64);
    samples
        .lock()
        .unwrap()
        .entry(case)
        .or_default()
        .push(per_frame);
    elapsed
}

/// Encode and decode one data frame, as the two sessions' wires do.
fn codec(payload: &Bytes) {
    let out = ServerWire::encode(Transmit::Frame(Frame::Data {
        id: ChannelId(1),
        payload: payload.clone(),
    }));
    let mut buf = BytesMut::with_capacity(out.encoded_len());
    out.encode(&mut buf).unwrap();
    let back = ServerFrame::decode(buf.freeze()).unwrap();
    black_box(AgentWire::decode(back));
}

/// The baseline: one copy of the payload into a fresh buffer.
fn copy(payload: &Bytes) {
    let mut buf = BytesMut::with_capacity(payload.len() + 16);
    buf.extend_from_slice(payload);
    black_box(buf.freeze());
}

/// A control-plane session with `CHANNELS` open channels, accepted by an
/// agent session; pings off, so that only data frames are measured.
struct Sender {
    cp: Session<u32>,
    ids: Vec<ChannelId>,
    now: std::time::Instant,
}

impl Sender {
    fn new() -> Self {
        let config = Config {
            ping_interval: Duration::ZERO,
            ..Config::default()
        };
        let now = Instant::now();
        let mut cp: Session<u32> = Session::new(Side::ControlPlane, config.clone());
        let mut agent: Session<u32> = Session::new(Side::Agent, config);
        let ids: Vec<ChannelId> = (0..CHANNELS)
            .map(|i| cp.open(now, Target::new(format!("db{i}"), 5432)).unwrap())
            .collect();
        while let Some(Transmit::Frame(f)) = cp.poll_transmit(now) {
            agent.handle_frame(now, f).unwrap();
        }
        while let Some(e) = agent.poll_event() {
            if let Event::Incoming { id, .. } = e {
                agent.accept(id).unwrap();
            }
        }
        while let Some(Transmit::Frame(f)) = agent.poll_transmit(now) {
            cp.handle_frame(now, f).unwrap();
        }
        let opened = std::iter::from_fn(|| cp.poll_event())
            .filter(|e| matches!(e, Event::Opened(_)))
            .count();
        assert_eq!(opened, CHANNELS, "every channel opened");
        Self { cp, ids, now }
    }

    /// Queues one frame's worth on every channel, sends them all, and
    /// returns their credit as the agent would after reading.
    fn round(&mut self, payload: &Bytes, credit: &mut Vec<(ChannelId, u32)>) {
        for id in &self.ids {
            let mut data = payload.clone();
            self.cp.send(*id, &mut data).unwrap();
        }
        while let Some(t) = self.cp.poll_transmit(self.now) {
            if let Transmit::Frame(Frame::Data { id, payload }) = t {
                // What the reader returns: the bytes and the frame's overhead.
                let cost = u32::try_from(payload.len()).unwrap() + DATA_FRAME_OVERHEAD;
                credit.push((id, cost));
                black_box(payload);
            }
        }
        assert_eq!(credit.len(), CHANNELS, "one frame per channel");
        for (id, increment) in credit.drain(..) {
            self.cp
                .handle_frame(self.now, Frame::Window { id, increment })
                .unwrap();
        }
    }
}

/// The baseline: the same frames cut off queues rotated in a `VecDeque`.
fn round_robin(queues: &mut VecDeque<(u64, Bytes, u64)>, payload: &Bytes) {
    for (_, data, _) in queues.iter_mut() {
        *data = payload.clone();
    }
    let mut sent = 0;
    while sent < CHANNELS {
        let Some((id, mut data, mut credit)) = queues.pop_front() else {
            break;
        };
        let frame = data.split_to(data.len().min(FRAME));
        credit += frame.len() as u64;
        black_box((id, frame));
        sent += 1;
        queues.push_back((id, data, credit));
    }
}

fn bench(c: &mut Criterion, samples: &Samples) {
    let mut group = c.benchmark_group("hot_paths");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(3));
    for (size, copy_case, codec_case) in [
        (64usize, "copy_64b", "codec_64b"),
        (FRAME, "copy_32k", "codec_32k"),
    ] {
        let payload = Bytes::from(vec![7u8; size]);
        group.bench_function(copy_case, |b| {
            b.iter_custom(|iters| timed(samples, copy_case, iters, 1, || copy(&payload)));
        });
        group.bench_function(codec_case, |b| {
            b.iter_custom(|iters| timed(samples, codec_case, iters, 1, || codec(&payload)));
        });
    }

    let payload = Bytes::from(vec![7u8; FRAME]);
    let mut queues: VecDeque<(u64, Bytes, u64)> =
        (0..CHANNELS as u64).map(|i| (i, Bytes::new(), 0)).collect();
    group.bench_function("round_robin_64", |b| {
        b.iter_custom(|iters| {
            timed(samples, "round_robin_64", iters, CHANNELS, || {
                round_robin(&mut queues, &payload);
            })
        });
    });
    let mut sender = Sender::new();
    let mut credit = Vec::with_capacity(CHANNELS);
    group.bench_function("scheduler_64_channels", |b| {
        b.iter_custom(|iters| {
            timed(samples, "scheduler_64_channels", iters, CHANNELS, || {
                sender.round(&payload, &mut credit);
            })
        });
    });
    group.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let samples: Samples = Arc::default();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &samples);
    c.final_summary();

    let mut samples = samples.lock().unwrap();
    println!("\ncase                     median ns/frame   baseline          ratio");
    for (case, baseline) in [
        ("codec_64b", "copy_64b"),
        ("codec_32k", "copy_32k"),
        ("scheduler_64_channels", "round_robin_64"),
    ] {
        let (Some(b), Some(v)) = (
            samples.get_mut(baseline).map(|v| median(v)),
            samples.get_mut(case).map(|v| median(v)),
        ) else {
            continue; // filtered out
        };
        println!("{case:<24} {v:>15.1}   {baseline:<16} {:>5.2}x", v / b);
        println!("{baseline:<24} {b:>15.1}");
    }
}
