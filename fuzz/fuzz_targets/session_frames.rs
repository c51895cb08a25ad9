//! Feeds a control-plane session a sequence of protobuf `AgentFrame`s made
//! from the fuzzer's bytes (each message prefixed by one length byte), with
//! the local side reading, writing and advancing time in between. Nothing
//! may panic, and no channel may buffer more than its window.

#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tether::proto::AgentFrame;
use tether_tunnel::{Config, Event, Inbound, ServerWire, Session, Side, Target, Wire};

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)] // the fake clock's starting point
    let mut now = Instant::now();
    let mut session: Session<()> = Session::new(Side::ControlPlane, Config::default());
    let _ = session.open(now, Target::new("db", 5432));
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        if let Ok(frame) = AgentFrame::decode(msg) {
            if let Inbound::Frame(f) = ServerWire::decode(frame) {
                if session.handle_frame(now, f).is_err() {
                    return;
                }
            }
        }
        // Local activity between frames, steered by the message length.
        match len % 4 {
            0 => {
                while let Some(ev) = session.poll_event() {
                    if let Event::Incoming { id, .. } = ev {
                        let _ = session.accept(id);
                    }
                }
            }
            1 => {
                for id in session.channel_ids() {
                    let _ = session.recv(now, id, 4096);
                    let _ = session.send(id, &mut Bytes::from_static(b"data"));
                }
            }
            2 => while session.poll_transmit(now).is_some() {},
            _ => {
                now += Duration::from_millis(len as u64 * 100);
                session.handle_timeout(now);
            }
        }
        for id in session.channel_ids() {
            if let Some(info) = session.channel_info(id) {
                assert!(info.buffered as u64 <= u64::from(info.recv_window));
            }
        }
    }
});
