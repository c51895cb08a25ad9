#![allow(clippy::unwrap_used)] // test helpers: a failure should panic loudly

//! Every frame from the network is untrusted. These properties feed a
//! session arbitrary bytes (decoded as protobuf, as tonic would) and
//! arbitrary frame sequences, and check that nothing panics, that buffering
//! stays within windows and budget, and that a channel the hostile frames do
//! not name keeps working. Also: the codec round trip through protobuf
//! bytes, `decode(encode(f)) == f`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use tether::proto::{AgentFrame, ServerFrame};
use tether_tunnel::{
    AgentWire, ChannelId, Config, Event, Frame, Inbound, MIN_WINDOW, Read, ResetCode, ServerWire,
    Session, Side, Target, Transmit, Wire,
};

fn reset_code() -> impl Strategy<Value = ResetCode> {
    (1i32..=13).prop_map(|c| ResetCode::try_from(c).unwrap())
}

fn channel_id() -> impl Strategy<Value = ChannelId> {
    prop_oneof![1u64..64, any::<u64>()].prop_map(ChannelId)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            channel_id(),
            ".{0,40}",
            any::<u32>(),
            ".{0,10}",
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(id, host, port, connection, connect_timeout_ms, window)| {
                Frame::Open {
                    id,
                    host,
                    port,
                    connection,
                    connect_timeout_ms,
                    window,
                }
            }),
        (channel_id(), any::<u32>()).prop_map(|(id, w)| Frame::OpenResult { id, result: Ok(w) }),
        (channel_id(), reset_code(), ".{0,40}").prop_map(|(id, c, m)| Frame::OpenResult {
            id,
            result: Err((c, m))
        }),
        (
            channel_id(),
            proptest::collection::vec(any::<u8>(), 0..40_000)
        )
            .prop_map(|(id, p)| Frame::Data {
                id,
                payload: Bytes::from(p)
            }),
        (channel_id(), any::<u32>()).prop_map(|(id, increment)| Frame::Window { id, increment }),
        channel_id().prop_map(|id| Frame::Close { id }),
        (channel_id(), reset_code(), ".{0,40}").prop_map(|(id, code, message)| Frame::Reset {
            id,
            code,
            message
        }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
    ]
}

/// A control plane with a bystander channel (id 2) open to an agent.
struct Victim {
    cp: Session<()>,
    agent: Session<()>,
    now: Instant,
    bystander: ChannelId,
}

impl Victim {
    fn new() -> Self {
        // The fake clock needs a starting point; nothing reads the real
        // clock again.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut v = Self {
            cp: Session::new(Side::ControlPlane, Config::default()),
            agent: Session::new(Side::Agent, Config::default()),
            now,
            bystander: ChannelId(0),
        };
        v.bystander = v.cp.open(now, Target::new("db", 5432)).unwrap();
        v.exchange();
        while let Some(ev) = v.agent.poll_event() {
            if let Event::Incoming { id, .. } = ev {
                v.agent.accept(id).unwrap();
            }
        }
        v.exchange();
        v
    }

    fn exchange(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(Transmit::Frame(f)) = self.cp.poll_transmit(self.now) {
                self.agent.handle_frame(self.now, f).unwrap();
                moved = true;
            }
            while let Some(Transmit::Frame(f)) = self.agent.poll_transmit(self.now) {
                self.cp.handle_frame(self.now, f).unwrap();
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// A hostile frame into the control plane; returns false if the session
    /// ended (allowed only for floods).
    fn hostile(&mut self, f: Frame) -> bool {
        // The bystander is never named by hostile frames.
        if f.channel() == Some(self.bystander) {
            return true;
        }
        self.cp.handle_frame(self.now, f).is_ok()
    }

    fn check_bounds(&self) {
        let config = Config::default();
        let limit = config.receive_budget + config.max_channels as u64 * u64::from(MIN_WINDOW);
        assert!(self.cp.committed_window() <= limit);
        for id in self.cp.channel_ids() {
            let info = self.cp.channel_info(id).unwrap();
            assert!(
                info.buffered as u64 <= u64::from(info.recv_window),
                "{id}: {info:?}"
            );
        }
    }

    /// The bystander still carries data both ways.
    fn bystander_works(&mut self) {
        // Answer whatever the hostile frames queued, without delivering it to
        // the agent (which never sent them).
        while self.cp.poll_transmit(self.now).is_some() {}
        let id = self.bystander;
        self.cp.send(id, &mut Bytes::from_static(b"ping")).unwrap();
        self.agent
            .send(id, &mut Bytes::from_static(b"pong"))
            .unwrap();
        self.exchange();
        assert_eq!(
            self.agent.recv(self.now, id, 100).unwrap(),
            Read::Data(Bytes::from_static(b"ping"))
        );
        assert_eq!(
            self.cp.recv(self.now, id, 100).unwrap(),
            Read::Data(Bytes::from_static(b"pong"))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn codec_round_trips_through_protobuf_bytes(f in frame()) {
        let agent_bytes = AgentWire::encode(Transmit::Frame(f.clone())).encode_to_vec();
        let decoded = ServerWire::decode(AgentFrame::decode(agent_bytes.as_slice()).unwrap());
        prop_assert_eq!(decoded, Inbound::Frame(f.clone()));
        let server_bytes = ServerWire::encode(Transmit::Frame(f.clone())).encode_to_vec();
        let decoded = AgentWire::decode(ServerFrame::decode(server_bytes.as_slice()).unwrap());
        prop_assert_eq!(decoded, Inbound::Frame(f));
    }

    #[test]
    fn arbitrary_bytes_never_panic(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let mut v = Victim::new();
        for bytes in messages {
            // What tonic would hand over: a decode error ends the call, a
            // decoded message goes to the session.
            let Ok(message) = AgentFrame::decode(bytes.as_slice()) else { continue };
            if let Inbound::Frame(f) = ServerWire::decode(message)
                && !v.hostile(f)
            {
                return Ok(());
            }
            v.check_bounds();
        }
        v.bystander_works();
    }

    #[test]
    fn arbitrary_frames_leave_other_channels_untouched(frames in proptest::collection::vec(frame(), 1..200), advance in 0u64..60_000) {
        let mut v = Victim::new();
        for f in frames {
            if !v.hostile(f) {
                return Ok(());
            }
            v.check_bounds();
        }
        v.now += Duration::from_millis(advance);
        v.cp.handle_timeout(v.now);
        v.check_bounds();
        v.bystander_works();
    }
}
