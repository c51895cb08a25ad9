//! One test per rule of the session, on two sessions in memory and a fake
//! clock (quinn's `Pair`): no runtime, no sockets, no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tether::proto::ResetCode;

use super::*;
use crate::{DATA_FRAME_OVERHEAD, ProtocolError, Transmit};

/// Two connected sessions: `cp` (control plane, even ids) and `agent`.
pub(crate) struct Pair {
    pub(crate) cp: Session<u32>,
    pub(crate) agent: Session<u32>,
    pub(crate) now: Instant,
    /// Upper-layer control frames each side received.
    pub(crate) cp_control: Vec<u32>,
    pub(crate) agent_control: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum End {
    Cp,
    Agent,
}

impl Pair {
    pub(crate) fn new(config: Config) -> Self {
        // The fake clock needs a starting point; nothing reads the real
        // clock again.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Self {
            cp: Session::new(Side::ControlPlane, config.clone()),
            agent: Session::new(Side::Agent, config),
            now,
            cp_control: Vec::new(),
            agent_control: Vec::new(),
        }
    }

    /// A pair whose first pings cross a link with the given round trip, so
    /// that both sides know it before any channel opens.
    pub(crate) fn with_rtt(config: Config, rtt: Duration) -> Self {
        let mut p = Self::new(config);
        let cp_ping = p.cp.poll_transmit(p.now);
        let agent_ping = p.agent.poll_transmit(p.now);
        p.now += rtt / 2;
        for (t, dst) in [(cp_ping, &mut p.agent), (agent_ping, &mut p.cp)] {
            let Some(Transmit::Frame(f @ Frame::Ping { .. })) = t else {
                panic!("expected a ping first, got {t:?}")
            };
            dst.handle_frame(p.now, f).unwrap();
        }
        p.now += rtt / 2;
        p.drive();
        assert_eq!((p.cp.rtt(), p.agent.rtt()), (Some(rtt), Some(rtt)));
        p
    }

    pub(crate) fn session(&mut self, end: End) -> &mut Session<u32> {
        match end {
            End::Cp => &mut self.cp,
            End::Agent => &mut self.agent,
        }
    }

    /// Moves up to `limit` frames from `from` to its peer; returns how many
    /// moved.
    pub(crate) fn step(&mut self, from: End, limit: usize) -> usize {
        let now = self.now;
        let mut moved = 0;
        while moved < limit {
            let (src, dst, control) = match from {
                End::Cp => (&mut self.cp, &mut self.agent, &mut self.agent_control),
                End::Agent => (&mut self.agent, &mut self.cp, &mut self.cp_control),
            };
            let Some(t) = src.poll_transmit(now) else {
                break;
            };
            match t {
                Transmit::Frame(f) => dst.handle_frame(now, f).expect("no session-fatal error"),
                Transmit::Control(c) => control.push(c),
            }
            moved += 1;
        }
        moved
    }

    /// Moves frames both ways until both sides are quiet.
    pub(crate) fn drive(&mut self) {
        for _ in 0..100_000 {
            if self.step(End::Cp, usize::MAX) + self.step(End::Agent, usize::MAX) == 0 {
                return;
            }
        }
        panic!("sessions never went quiet");
    }

    pub(crate) fn events(&mut self, end: End) -> Vec<Event> {
        std::iter::from_fn(|| self.session(end).poll_event()).collect()
    }

    /// Opens a channel from the control plane, accepted by the agent.
    pub(crate) fn open_channel(&mut self, host: &str) -> ChannelId {
        let id = self.cp.open(self.now, Target::new(host, 5432)).unwrap();
        self.drive();
        let incoming = self.events(End::Agent);
        assert!(
            incoming
                .iter()
                .any(|e| matches!(e, Event::Incoming { id: i, .. } if *i == id)),
            "{incoming:?}"
        );
        self.agent.accept(id).unwrap();
        self.drive();
        assert!(self.events(End::Cp).contains(&Event::Opened(id)));
        id
    }

    /// Reads everything buffered on one side of a channel.
    pub(crate) fn read_all(&mut self, end: End, id: ChannelId) -> (Vec<u8>, bool) {
        let now = self.now;
        let mut out = Vec::new();
        loop {
            match self.session(end).recv(now, id, usize::MAX) {
                Ok(Read::Data(b)) => out.extend_from_slice(&b),
                Ok(Read::Fin) => return (out, true),
                Ok(Read::Pending) => return (out, false),
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    }
}

fn pair() -> Pair {
    Pair::new(Config::default())
}

fn reset_of(events: &[Event], id: ChannelId) -> Option<ResetInfo> {
    events.iter().find_map(|e| match e {
        Event::Reset { id: i, info } if *i == id => Some(info.clone()),
        _ => None,
    })
}

/// Sends a raw frame from the agent's side straight into the control plane.
fn inject_into_cp(p: &mut Pair, f: Frame) {
    p.cp.handle_frame(p.now, f).unwrap();
}

/// Every channel frame a session would send now (pings and pongs left out).
fn last_frame_from(s: &mut Session<u32>, now: Instant) -> Vec<Frame> {
    std::iter::from_fn(|| s.poll_transmit(now))
        .filter_map(|t| match t {
            Transmit::Frame(Frame::Ping { .. } | Frame::Pong { .. }) | Transmit::Control(_) => None,
            Transmit::Frame(f) => Some(f),
        })
        .collect()
}

#[test]
fn ids_follow_side_parity_and_increase() {
    let mut p = pair();
    let a = p.cp.open(p.now, Target::new("db", 5432)).unwrap();
    let b = p.cp.open(p.now, Target::new("db", 5432)).unwrap();
    let c = p.agent.open(p.now, Target::new("cp", 443)).unwrap();
    let d = p.agent.open(p.now, Target::new("cp", 443)).unwrap();
    assert_eq!(
        (a, b, c, d),
        (ChannelId(2), ChannelId(4), ChannelId(1), ChannelId(3))
    );
}

#[test]
fn open_accept_and_data_both_ways() {
    let mut p = pair();
    let id = p.open_channel("db");
    let mut req = Bytes::from_static(b"SELECT 1");
    assert_eq!(p.cp.send(id, &mut req).unwrap(), 8);
    p.drive();
    assert_eq!(p.events(End::Agent), vec![Event::Readable(id)]);
    assert_eq!(p.read_all(End::Agent, id), (b"SELECT 1".to_vec(), false));
    let mut resp = Bytes::from_static(b"1 row");
    p.agent.send(id, &mut resp).unwrap();
    p.drive();
    assert_eq!(p.read_all(End::Cp, id), (b"1 row".to_vec(), false));
}

#[test]
fn incoming_carries_the_target() {
    let mut p = pair();
    let mut target = Target::new("10.0.0.7", 3306);
    target.connection = "orders-db".into();
    target.connect_timeout = Duration::from_millis(2500);
    let id = p.cp.open(p.now, target.clone()).unwrap();
    p.drive();
    assert_eq!(p.events(End::Agent), vec![Event::Incoming { id, target }]);
}

#[test]
fn refusal_reaches_the_opener_with_its_reason() {
    let mut p = pair();
    let id = p.cp.open(p.now, Target::new("10.9.9.9", 22)).unwrap();
    p.drive();
    p.events(End::Agent);
    p.agent
        .refuse(
            id,
            ResetCode::PolicyDenied,
            "egress to 10.9.9.9:22 denied: add it to egress.allow",
        )
        .unwrap();
    p.drive();
    let info = reset_of(&p.events(End::Cp), id).expect("a reset event");
    assert_eq!(info.code, ResetCode::PolicyDenied);
    assert!(info.message.contains("egress.allow"));
    assert!(info.by_peer);
    assert_eq!(p.cp.channel_count(), 0);
    assert_eq!(
        p.cp.committed_window(),
        0,
        "the window went back to the budget"
    );
}

#[test]
fn data_is_not_accepted_before_the_channel_opens() {
    let mut p = pair();
    let id = p.cp.open(p.now, Target::new("db", 5432)).unwrap();
    let mut data = Bytes::from_static(b"early");
    assert_eq!(p.cp.send(id, &mut data), Err(ChannelError::NotOpen(id)));
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let mut p = pair();
    let id = p.open_channel("db");
    p.cp.send(id, &mut Bytes::from_static(b"request")).unwrap();
    p.cp.close(id).unwrap();
    p.drive();
    assert_eq!(p.read_all(End::Agent, id), (b"request".to_vec(), true));
    assert_eq!(
        p.cp.send(id, &mut Bytes::from_static(b"more")),
        Err(ChannelError::WriteClosed(id))
    );
    // The agent's direction still works after the control plane's FIN.
    p.agent
        .send(id, &mut Bytes::from_static(b"response"))
        .unwrap();
    p.agent.close(id).unwrap();
    p.drive();
    assert_eq!(p.read_all(End::Cp, id), (b"response".to_vec(), true));
    assert!(p.events(End::Cp).contains(&Event::Closed(id)));
    assert!(p.events(End::Agent).contains(&Event::Closed(id)));
    assert_eq!(p.cp.channel_count() + p.agent.channel_count(), 0);
}

#[test]
fn reset_reaches_the_peer_with_code_and_text() {
    let mut p = pair();
    let id = p.open_channel("db");
    p.agent
        .reset(
            id,
            ResetCode::TargetReset,
            "connection reset by 10.0.0.7:5432",
        )
        .unwrap();
    p.drive();
    let info = reset_of(&p.events(End::Cp), id).unwrap();
    assert_eq!(info.code, ResetCode::TargetReset);
    assert_eq!(info.message, "connection reset by 10.0.0.7:5432");
    assert!(info.by_peer);
    assert_eq!(p.cp.recv(p.now, id, 10), Err(ChannelError::Closed(id)));
}

#[test]
fn data_beyond_credit_resets_only_that_channel() {
    let mut p = pair();
    let victim = p.open_channel("a");
    let bystander = p.open_channel("b");
    p.agent
        .send(bystander, &mut Bytes::from_static(b"fine"))
        .unwrap();
    p.drive();
    // A hostile agent ignores its credit: 9 frames of 32 KiB > 256 KiB.
    for _ in 0..9 {
        inject_into_cp(
            &mut p,
            Frame::Data {
                id: victim,
                payload: Bytes::from(vec![0u8; 32 * 1024]),
            },
        );
    }
    let events = p.events(End::Cp);
    let info = reset_of(&events, victim).expect("victim reset");
    assert_eq!(info.code, ResetCode::FlowControl);
    assert!(info.message.contains("exceeds"), "{}", info.message);
    assert!(!info.by_peer);
    assert_eq!(p.cp.stats().violations, 1);
    // The bystander is untouched and still works.
    assert_eq!(p.read_all(End::Cp, bystander), (b"fine".to_vec(), false));
    p.cp.send(bystander, &mut Bytes::from_static(b"still here"))
        .unwrap();
    p.drive();
    assert_eq!(p.read_all(End::Agent, bystander).0, b"still here");
    // The agent learnt why its channel died.
    assert_eq!(
        reset_of(&p.events(End::Agent), victim).unwrap().code,
        ResetCode::FlowControl
    );
}

#[test]
fn buffered_data_never_exceeds_the_window() {
    let mut p = pair();
    let id = p.open_channel("db");
    // The agent writes 1 MiB; the control plane never reads.
    let mut data = Bytes::from(vec![5u8; 1 << 20]);
    let taken = p.agent.send(id, &mut data).unwrap();
    p.drive();
    let info = p.cp.channel_info(id).unwrap();
    assert!(
        info.buffered as u64 <= u64::from(info.recv_window),
        "{info:?}"
    );
    assert_eq!(info.buffered, taken);
    assert!(taken < 256 * 1024, "the sender stopped at its credit");
    assert!(data.len() > 700_000, "the rest stayed with the writer");
    p.cp.channels[&id].recv.check_invariant();
}

#[test]
fn reading_returns_credit_and_wakes_the_writer() {
    let mut p = pair();
    let id = p.open_channel("db");
    let mut data = Bytes::from(vec![1u8; 1 << 20]);
    p.agent.send(id, &mut data).unwrap();
    p.drive();
    assert_eq!(p.agent.send_capacity(id).unwrap(), 0);
    p.events(End::Agent);
    let (got, _) = p.read_all(End::Cp, id);
    p.drive();
    assert!(p.events(End::Agent).contains(&Event::Writable(id)));
    assert!(p.agent.send_capacity(id).unwrap() >= got.len() - 64 * 8);
    assert_eq!(p.cp.stats().window_updates, 1);
    p.cp.channels[&id].recv.check_invariant();
}

#[test]
fn frames_for_a_never_opened_channel_get_one_reset() {
    let mut p = pair();
    let ok = p.open_channel("db");
    inject_into_cp(
        &mut p,
        Frame::Data {
            id: ChannelId(999),
            payload: Bytes::from_static(b"?"),
        },
    );
    let frames = last_frame_from(&mut p.cp, p.now);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Frame::Reset {
                id: ChannelId(999),
                code: ResetCode::UnknownChannel,
                ..
            }
        )),
        "{frames:?}"
    );
    assert_eq!(p.cp.stats().unknown_channel_frames, 1);
    assert!(
        p.cp.channel_info(ok).is_some(),
        "other channels are untouched"
    );
}

#[test]
fn late_frames_for_ended_channels_are_dropped_quietly() {
    let mut p = pair();
    let id = p.open_channel("db");
    p.cp.reset(id, ResetCode::Cancelled, "client went away")
        .unwrap();
    // The agent had sent data before it saw the reset.
    inject_into_cp(
        &mut p,
        Frame::Data {
            id,
            payload: Bytes::from_static(b"in flight"),
        },
    );
    inject_into_cp(&mut p, Frame::Window { id, increment: 100 });
    let frames = last_frame_from(&mut p.cp, p.now);
    assert_eq!(frames.len(), 1, "only the reset itself: {frames:?}");
    assert_eq!(p.cp.stats().late_frames, 2);
    assert_eq!(p.cp.stats().violations, 0);
}

#[test]
fn a_reset_is_never_answered_with_a_reset() {
    let mut p = pair();
    inject_into_cp(
        &mut p,
        Frame::Reset {
            id: ChannelId(77),
            code: ResetCode::Internal,
            message: "?".into(),
        },
    );
    assert!(last_frame_from(&mut p.cp, p.now).is_empty());
}

#[test]
fn duplicate_open_resets_the_channel() {
    let mut p = pair();
    let id = p.agent.open(p.now, Target::new("cp", 1)).unwrap();
    p.drive();
    p.events(End::Cp);
    inject_into_cp(
        &mut p,
        Frame::Open {
            id,
            host: "x".into(),
            port: 1,
            connection: String::new(),
            connect_timeout_ms: 0,
            window: 65536,
        },
    );
    let info = reset_of(&p.events(End::Cp), id).unwrap();
    assert!(info.message.contains("duplicate open"), "{}", info.message);
}

#[test]
fn open_with_the_wrong_parity_is_refused() {
    let mut p = pair();
    // The agent must use odd ids.
    inject_into_cp(
        &mut p,
        Frame::Open {
            id: ChannelId(8),
            host: "x".into(),
            port: 1,
            connection: String::new(),
            connect_timeout_ms: 0,
            window: 65536,
        },
    );
    let frames = last_frame_from(&mut p.cp, p.now);
    assert!(
        matches!(
            &frames[..],
            [Frame::Reset { id: ChannelId(8), code: ResetCode::ProtocolError, message }] if message.contains("odd")
        ),
        "{frames:?}"
    );
    assert_eq!(p.cp.channel_count(), 0);
}

#[test]
fn opens_with_bad_targets_or_windows_are_refused() {
    let mut p = pair();
    let cases = [
        ("", 5432, 65536, "host"),
        ("db", 0, 65536, "port 0"),
        ("db", 70000, 65536, "port 70000"),
        ("db", 5432, 10, "window 10"),
    ];
    for (n, (host, port, window, needle)) in cases.into_iter().enumerate() {
        let id = ChannelId(2 * n as u64 + 1);
        inject_into_cp(
            &mut p,
            Frame::Open {
                id,
                host: host.into(),
                port,
                connection: String::new(),
                connect_timeout_ms: 0,
                window,
            },
        );
        let frames = last_frame_from(&mut p.cp, p.now);
        assert!(
            matches!(
                &frames[..],
                [Frame::OpenResult { id: i, result: Err((ResetCode::ProtocolError, m)) }] if *i == id && m.contains(needle)
            ),
            "{needle}: {frames:?}"
        );
    }
    assert_eq!(p.cp.channel_count(), 0);
}

#[test]
fn oversize_and_empty_data_frames_reset_the_channel() {
    for (payload, needle) in [
        (vec![0u8; 32 * 1024 + 1], "exceeds the 32768-byte limit"),
        (vec![], "empty data frame"),
    ] {
        let mut p = pair();
        let id = p.open_channel("db");
        inject_into_cp(
            &mut p,
            Frame::Data {
                id,
                payload: Bytes::from(payload),
            },
        );
        let info = reset_of(&p.events(End::Cp), id).unwrap();
        assert_eq!(info.code, ResetCode::ProtocolError);
        assert!(info.message.contains(needle), "{}", info.message);
    }
}

#[test]
fn data_after_close_resets_the_channel() {
    let mut p = pair();
    let id = p.open_channel("db");
    inject_into_cp(&mut p, Frame::Close { id });
    inject_into_cp(
        &mut p,
        Frame::Data {
            id,
            payload: Bytes::from_static(b"x"),
        },
    );
    let info = reset_of(&p.events(End::Cp), id).unwrap();
    assert!(info.message.contains("after its close"), "{}", info.message);
}

#[test]
fn window_overflow_and_zero_increments_reset_the_channel() {
    let mut p = pair();
    let a = p.open_channel("a");
    inject_into_cp(
        &mut p,
        Frame::Window {
            id: a,
            increment: u32::MAX,
        },
    );
    let info = reset_of(&p.events(End::Cp), a).unwrap();
    assert_eq!(info.code, ResetCode::FlowControl);
    assert!(info.message.contains("window overflow"), "{}", info.message);

    let b = p.open_channel("b");
    inject_into_cp(
        &mut p,
        Frame::Window {
            id: b,
            increment: 0,
        },
    );
    let info = reset_of(&p.events(End::Cp), b).unwrap();
    assert_eq!(info.code, ResetCode::ProtocolError);
    assert!(info.message.contains("zero"), "{}", info.message);
}

#[test]
fn unanswered_open_times_out() {
    let mut p = pair();
    let id = p.cp.open(p.now, Target::new("db", 5432)).unwrap();
    assert_eq!(p.cp.poll_timeout(), Some(p.now + Duration::from_secs(30)));
    p.now += Duration::from_secs(31);
    p.cp.handle_timeout(p.now);
    let info = reset_of(&p.events(End::Cp), id).unwrap();
    assert_eq!(info.code, ResetCode::Timeout);
    assert_eq!(p.cp.committed_window(), 0);
}

#[test]
fn the_peer_cannot_exceed_max_channels() {
    let mut p = pair();
    p.cp = Session::new(
        Side::ControlPlane,
        Config {
            max_channels: 2,
            ..Config::default()
        },
    );
    p.open_channel("a");
    p.open_channel("b");
    assert_eq!(
        p.cp.open(p.now, Target::new("c", 1)),
        Err(ChannelError::TooManyChannels(2))
    );
    // The agent's third open is refused, not fatal.
    let id = p.agent.open(p.now, Target::new("c", 1)).unwrap();
    p.drive();
    let info = reset_of(&p.events(End::Agent), id).unwrap();
    assert_eq!(info.code, ResetCode::ResourceExhausted);
}

#[test]
fn control_frames_overtake_queued_data() {
    let mut p = pair();
    let id = p.open_channel("db");
    p.agent
        .send(id, &mut Bytes::from(vec![0u8; 200_000]))
        .unwrap();
    p.agent.queue_control(7).unwrap();
    // The very first frame out is the control frame, although data waited.
    match p.agent.poll_transmit(p.now) {
        Some(Transmit::Control(7)) => {}
        other => panic!("expected the control frame first, got {other:?}"),
    }
}

#[test]
fn control_queue_is_bounded() {
    let config = Config {
        max_control_queue: 3,
        ..Config::default()
    };
    let mut s: Session<u32> = Session::new(Side::Agent, config);
    for i in 0..3 {
        s.queue_control(i).unwrap();
    }
    assert_eq!(s.queue_control(99), Err(99));
}

#[test]
fn a_flood_of_unknown_channel_frames_ends_the_session() {
    let mut p = pair();
    let mut result = Ok(());
    for id in 0..2000u64 {
        result = p.cp.handle_frame(
            p.now,
            Frame::Window {
                id: ChannelId(1_000_001 + 2 * id),
                increment: 1,
            },
        );
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ProtocolError::UnknownChannelFlood(1024)));
}

#[test]
fn shutdown_resets_every_channel() {
    let mut p = pair();
    let a = p.open_channel("a");
    let b = p.open_channel("b");
    p.cp.shutdown(ResetCode::SessionLost, "agent disconnected");
    let events = p.events(End::Cp);
    for id in [a, b] {
        assert_eq!(reset_of(&events, id).unwrap().code, ResetCode::SessionLost);
    }
    assert_eq!(
        p.cp.open(p.now, Target::new("c", 1)),
        Err(ChannelError::SessionClosed)
    );
    assert_eq!(p.cp.committed_window(), 0);
}

#[test]
fn ping_measures_the_round_trip() {
    let mut p = pair();
    // The first ping goes out at once.
    let Some(Transmit::Frame(Frame::Ping { nonce })) = p.cp.poll_transmit(p.now) else {
        panic!("no ping first")
    };
    p.agent.handle_frame(p.now, Frame::Ping { nonce }).unwrap();
    let Some(Transmit::Frame(pong)) = p.agent.poll_transmit(p.now) else {
        panic!("no pong")
    };
    assert_eq!(
        pong,
        Frame::Pong { nonce },
        "the pong goes before the agent's own ping"
    );
    p.now += Duration::from_millis(50);
    p.cp.handle_frame(p.now, Frame::Pong { nonce }).unwrap();
    assert_eq!(p.cp.rtt(), Some(Duration::from_millis(50)));
    let measured = p.now;
    // The next ping waits for the interval.
    p.open_channel("db");
    assert!(!p.cp.wants_transmit(p.now));
    assert_eq!(p.cp.poll_timeout(), Some(measured + Duration::from_secs(5)));
}

#[test]
fn an_idle_session_pings_once_then_again_when_a_channel_opens() {
    let mut p = Pair::with_rtt(Config::default(), Duration::from_millis(10));
    // No channel: no ping, and no timer for one, however long it stays idle.
    assert_eq!(p.cp.poll_timeout(), None);
    p.now += Duration::from_secs(60);
    assert!(!p.cp.wants_transmit(p.now));
    assert!(!p.agent.wants_transmit(p.now));
    // A channel opens: the overdue ping goes out with it.
    let id = p.cp.open(p.now, Target::new("db", 5432)).unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| p.cp.poll_transmit(p.now)).collect();
    assert!(
        sent.iter()
            .any(|t| matches!(t, Transmit::Frame(Frame::Ping { .. }))),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|t| matches!(t, Transmit::Frame(Frame::Open { id: i, .. }) if *i == id)),
        "{sent:?}"
    );
}

/// Runs a bulk transfer agent → control plane in which the reader keeps up
/// and the round trip is `rtt`; returns the control plane's final window.
fn bulk_with_rtt(config: Config, rtt: Duration, bytes: usize) -> (Pair, ChannelId) {
    let mut p = if config.ping_interval.is_zero() {
        Pair::new(config)
    } else {
        Pair::with_rtt(config, rtt)
    };
    let id = p.open_channel("db");
    let mut left = bytes;
    while left > 0 {
        let cap = p.agent.send_capacity(id).unwrap().min(left);
        if cap > 0 {
            let mut chunk = Bytes::from(vec![1u8; cap]);
            left -= p.agent.send(id, &mut chunk).unwrap();
        }
        p.drive();
        p.read_all(End::Cp, id);
        p.drive();
        // Window updates arrive well within two round trips of each other.
        p.now += rtt / 4;
    }
    (p, id)
}

#[test]
fn window_grows_when_the_reader_keeps_up_on_a_slow_link() {
    let (p, id) = bulk_with_rtt(Config::default(), Duration::from_millis(50), 64 << 20);
    let info = p.cp.channel_info(id).unwrap();
    assert_eq!(info.recv_window, 16 << 20, "doubled up to max_window");
    assert!(p.cp.stats().window_growths >= 6);
}

#[test]
fn window_growth_stays_within_the_session_budget() {
    let config = Config {
        receive_budget: 1 << 20,
        ..Config::default()
    };
    let (p, id) = bulk_with_rtt(config, Duration::from_millis(50), 16 << 20);
    let info = p.cp.channel_info(id).unwrap();
    assert_eq!(info.recv_window, 1 << 20, "grew to the budget and stopped");
    assert!(p.cp.committed_window() <= 1 << 20);
}

#[test]
fn no_rtt_sample_means_no_growth() {
    let config = Config {
        ping_interval: Duration::ZERO,
        ..Config::default()
    };
    let (p, id) = bulk_with_rtt(config, Duration::from_millis(50), 4 << 20);
    assert_eq!(p.cp.channel_info(id).unwrap().recv_window, 256 * 1024);
}

#[test]
fn spent_budget_gives_new_channels_the_minimum_and_shrinks_back() {
    let config = Config {
        receive_budget: 512 * 1024,
        ..Config::default()
    };
    let mut p = Pair::new(config);
    let a = p.open_channel("a");
    let b = p.open_channel("b");
    let c = p.open_channel("c");
    // Budget 512 KiB: two full windows, then the minimum.
    assert_eq!(p.agent.channel_info(a).unwrap().recv_window, 256 * 1024);
    assert_eq!(p.agent.channel_info(b).unwrap().recv_window, 256 * 1024);
    assert_eq!(p.agent.channel_info(c).unwrap().recv_window, MIN_WINDOW);
    assert_eq!(
        p.agent.committed_window(),
        512 * 1024 + u64::from(MIN_WINDOW)
    );
    // Traffic on `a` gives back the overshoot.
    let mut data = Bytes::from(vec![0u8; 200_000]);
    p.cp.send(a, &mut data).unwrap();
    p.drive();
    p.read_all(End::Agent, a);
    p.drive();
    assert_eq!(p.agent.committed_window(), 512 * 1024);
    assert_eq!(
        p.agent.channel_info(a).unwrap().recv_window,
        256 * 1024 - MIN_WINDOW
    );
    p.agent.channels[&a].recv.check_invariant();
}

#[test]
fn each_data_frame_costs_its_overhead() {
    let mut p = pair();
    let id = p.open_channel("db");
    let before = p.cp.channel_info(id).unwrap().send_credit;
    p.cp.send(id, &mut Bytes::from_static(b"x")).unwrap();
    assert_eq!(
        p.cp.channel_info(id).unwrap().send_credit,
        before - 1 - DATA_FRAME_OVERHEAD
    );
}
