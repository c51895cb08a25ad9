#![allow(clippy::unwrap_used)] // test helpers: a failure should panic loudly

//! Properties of two sessions connected in memory, under random
//! interleavings of opens, writes of random sizes, reads at random speeds,
//! half-closes, resets, partial frame delivery and clock advances on many
//! channels:
//! - every byte accepted by `send` is delivered exactly once and in order
//!   (unless the channel was reset);
//! - credit is never exceeded: neither side ever sees a flow-control or
//!   protocol violation;
//! - buffered bytes never exceed the channel's window, and the windows of a
//!   session stay within its budget (plus the per-channel minimum).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;
use proptest::prelude::*;
use tether_tunnel::{
    ChannelError, ChannelId, Config, Event, Frame, MIN_WINDOW, Read, ResetCode, Session, Side,
    Target, Transmit,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum End {
    Cp,
    Agent,
}

impl End {
    fn other(self) -> End {
        match self {
            End::Cp => End::Agent,
            End::Agent => End::Cp,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Open(End),
    Write {
        from: End,
        ch: usize,
        len: usize,
    },
    Read {
        at: End,
        ch: usize,
        max: usize,
    },
    Close {
        from: End,
        ch: usize,
    },
    Reset {
        from: End,
        ch: usize,
    },
    /// Move frames the sender has into the link.
    Pump(End),
    /// Deliver up to n frames from the link to the receiver.
    Deliver {
        from: End,
        n: usize,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![Just(End::Cp), Just(End::Agent)];
    prop_oneof![
        2 => end.clone().prop_map(Op::Open),
        6 => (end.clone(), any::<usize>(), 1usize..120_000).prop_map(|(from, ch, len)| Op::Write { from, ch, len }),
        6 => (end.clone(), any::<usize>(), 1usize..200_000).prop_map(|(at, ch, max)| Op::Read { at, ch, max }),
        1 => (end.clone(), any::<usize>()).prop_map(|(from, ch)| Op::Close { from, ch }),
        1 => (end.clone(), any::<usize>()).prop_map(|(from, ch)| Op::Reset { from, ch }),
        5 => end.clone().prop_map(Op::Pump),
        8 => (end, 1usize..64).prop_map(|(from, n)| Op::Deliver { from, n }),
        1 => (0u64..20_000).prop_map(Op::Advance),
    ]
}

/// The byte at `offset` of the stream in direction `from` on channel `id`:
/// deterministic, so reads can be checked without storing what was written.
fn byte_at(id: ChannelId, from: End, offset: u64) -> u8 {
    let salt = id.0.wrapping_mul(0x9e37_79b9) ^ if from == End::Cp { 0x55 } else { 0xaa };
    (offset.wrapping_mul(31) ^ (offset >> 7) ^ salt).to_le_bytes()[0]
}

#[derive(Default, Debug)]
struct Direction {
    written: u64,
    read: u64,
    closed: bool,
    fin_seen: bool,
}

#[derive(Debug)]
struct Model {
    /// Per channel, per writing end.
    dirs: HashMap<(ChannelId, End), Direction>,
    reset: HashMap<ChannelId, bool>,
}

struct World {
    cp: Session<()>,
    agent: Session<()>,
    links: HashMap<End, VecDeque<Frame>>,
    now: Instant,
    channels: Vec<ChannelId>,
    model: Model,
    budget: u64,
    max_channels: usize,
}

impl World {
    fn new(config: Config) -> Self {
        // The fake clock needs a starting point; nothing reads the real
        // clock again.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Self {
            budget: config.receive_budget,
            max_channels: config.max_channels,
            cp: Session::new(Side::ControlPlane, config.clone()),
            agent: Session::new(Side::Agent, config),
            links: HashMap::from([(End::Cp, VecDeque::new()), (End::Agent, VecDeque::new())]),
            now,
            channels: Vec::new(),
            model: Model {
                dirs: HashMap::new(),
                reset: HashMap::new(),
            },
        }
    }

    fn session(&mut self, end: End) -> &mut Session<()> {
        match end {
            End::Cp => &mut self.cp,
            End::Agent => &mut self.agent,
        }
    }

    fn pick(&self, ch: usize) -> Option<ChannelId> {
        (!self.channels.is_empty()).then(|| self.channels[ch % self.channels.len()])
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Open(from) => {
                if let Ok(id) = self.session(from).open(now, Target::new("t", 1)) {
                    self.channels.push(id);
                }
            }
            Op::Write { from, ch, len } => {
                let Some(id) = self.pick(ch) else { return };
                let start = self.model.dirs.get(&(id, from)).map_or(0, |d| d.written);
                let data: Vec<u8> = (0..len as u64)
                    .map(|i| byte_at(id, from, start + i))
                    .collect();
                let mut data = Bytes::from(data);
                match self.session(from).send(id, &mut data) {
                    Ok(n) => self.model.dirs.entry((id, from)).or_default().written += n as u64,
                    Err(
                        ChannelError::Closed(_)
                        | ChannelError::NotOpen(_)
                        | ChannelError::WriteClosed(_),
                    ) => {}
                    Err(e) => panic!("unexpected send error {e}"),
                }
            }
            Op::Read { at, ch, max } => {
                let Some(id) = self.pick(ch) else { return };
                self.read(at, id, max);
            }
            Op::Close { from, ch } => {
                let Some(id) = self.pick(ch) else { return };
                if self.session(from).close(id).is_ok() {
                    self.model.dirs.entry((id, from)).or_default().closed = true;
                }
            }
            Op::Reset { from, ch } => {
                let Some(id) = self.pick(ch) else { return };
                if self
                    .session(from)
                    .reset(id, ResetCode::Cancelled, "test")
                    .is_ok()
                {
                    self.model.reset.insert(id, true);
                }
            }
            Op::Pump(from) => self.pump(from),
            Op::Deliver { from, n } => self.deliver(from, n),
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                let now = self.now;
                self.cp.handle_timeout(now);
                self.agent.handle_timeout(now);
            }
        }
        self.handle_events(End::Cp);
        self.handle_events(End::Agent);
        self.check_invariants();
    }

    fn read(&mut self, at: End, id: ChannelId, max: usize) {
        let now = self.now;
        let from = at.other();
        match self.session(at).recv(now, id, max) {
            Ok(Read::Data(b)) => {
                let dir = self.model.dirs.entry((id, from)).or_default();
                for (i, byte) in b.iter().enumerate() {
                    let offset = dir.read + i as u64;
                    assert_eq!(
                        *byte,
                        byte_at(id, from, offset),
                        "channel {id} byte {offset} from {from:?}"
                    );
                }
                dir.read += b.len() as u64;
                assert!(
                    dir.read <= dir.written,
                    "read more than was written on {id}"
                );
            }
            Ok(Read::Fin) => {
                let dir = self.model.dirs.entry((id, from)).or_default();
                assert!(
                    dir.closed,
                    "end of stream on {id} although the writer never closed"
                );
                assert_eq!(
                    dir.read, dir.written,
                    "end of stream on {id} before every byte arrived"
                );
                dir.fin_seen = true;
            }
            Ok(Read::Pending) | Err(ChannelError::Closed(_) | ChannelError::NotOpen(_)) => {}
            Err(e) => panic!("unexpected recv error {e}"),
        }
    }

    fn pump(&mut self, from: End) {
        let now = self.now;
        while let Some(t) = self.session(from).poll_transmit(now) {
            if let Transmit::Frame(f) = t {
                self.links.get_mut(&from).unwrap().push_back(f);
            }
        }
    }

    fn deliver(&mut self, from: End, n: usize) {
        let now = self.now;
        for _ in 0..n {
            let Some(f) = self.links.get_mut(&from).unwrap().pop_front() else {
                return;
            };
            self.session(from.other()).handle_frame(now, f).unwrap();
        }
    }

    fn handle_events(&mut self, end: End) {
        while let Some(ev) = self.session(end).poll_event() {
            match ev {
                // The peer may have reset it in the same batch of frames.
                Event::Incoming { id, .. } => match self.session(end).accept(id) {
                    Ok(()) | Err(ChannelError::Closed(_)) => {}
                    Err(e) => panic!("accept failed: {e}"),
                },
                Event::Reset { id, info } => {
                    assert!(
                        !matches!(info.code, ResetCode::FlowControl | ResetCode::ProtocolError),
                        "{end:?} saw a violation on {id}: {}",
                        info.message
                    );
                    self.model.reset.insert(id, true);
                }
                Event::Opened(_) | Event::Readable(_) | Event::Writable(_) | Event::Closed(_) => {}
            }
        }
    }

    fn check_invariants(&mut self) {
        for end in [End::Cp, End::Agent] {
            let hard_limit = self.budget + self.max_channels as u64 * u64::from(MIN_WINDOW);
            let s = self.session(end);
            assert_eq!(s.stats().violations, 0, "{end:?} counted a violation");
            assert!(s.committed_window() <= hard_limit);
            let mut buffered_total = 0u64;
            for id in s.channel_ids() {
                let info = s.channel_info(id).unwrap();
                assert!(
                    info.buffered as u64 <= u64::from(info.recv_window),
                    "{end:?} channel {id} buffers {} bytes over a {}-byte window",
                    info.buffered,
                    info.recv_window
                );
                buffered_total += info.buffered as u64;
            }
            assert!(buffered_total <= s.committed_window());
        }
    }

    /// Delivers everything and reads everything until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let before = self.progress();
            for end in [End::Cp, End::Agent] {
                self.pump(end);
                self.deliver(end, usize::MAX);
                self.handle_events(end.other());
            }
            for id in self.channels.clone() {
                for end in [End::Cp, End::Agent] {
                    for _ in 0..64 {
                        self.read(end, id, usize::MAX);
                    }
                }
            }
            self.handle_events(End::Cp);
            self.handle_events(End::Agent);
            self.check_invariants();
            if self.progress() == before {
                return;
            }
        }
        panic!("never settled");
    }

    fn progress(&self) -> (u64, usize, usize) {
        let read = self.model.dirs.values().map(|d| d.read).sum();
        (
            read,
            self.links[&End::Cp].len(),
            self.links[&End::Agent].len(),
        )
    }

    fn check_delivery(&self) {
        for (&(id, from), dir) in &self.model.dirs {
            if self.model.reset.contains_key(&id) {
                continue;
            }
            assert_eq!(
                dir.read, dir.written,
                "channel {id} from {from:?}: written {} read {}",
                dir.written, dir.read
            );
            if dir.closed {
                assert!(
                    dir.fin_seen,
                    "channel {id} from {from:?}: close never reached the reader"
                );
            }
        }
    }
}

fn small_config() -> Config {
    Config {
        // Small windows and budget so that limits are actually hit.
        initial_window: MIN_WINDOW,
        max_window: 4 * MIN_WINDOW,
        receive_budget: 4 * u64::from(MIN_WINDOW),
        max_channels: 16,
        ping_interval: Duration::from_secs(1),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_arrives_once_in_order_within_credit(ops in proptest::collection::vec(op(), 1..300)) {
        let mut world = World::new(small_config());
        for op in &ops {
            world.apply(op);
        }
        world.settle();
        world.check_delivery();
    }

    #[test]
    fn same_with_default_limits(ops in proptest::collection::vec(op(), 1..200)) {
        let mut world = World::new(Config::default());
        for op in &ops {
            world.apply(op);
        }
        world.settle();
        world.check_delivery();
    }
}
