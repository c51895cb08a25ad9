#![allow(clippy::unwrap_used)] // test helpers: a failure should panic loudly

//! Invariant 2: a stalled channel does not slow other channels, heartbeats
//! or commands. Channel X's reader never reads; channel Y moves 256 MiB; a
//! command round trip runs after every 32 MiB of Y. Asserted by completion
//! and counts, not by wall-clock timing.

use std::time::Duration;

use tether::proto::{
    Command, CommandAck, CommandResult, agent_frame, command_result, server_frame,
};
use tether_tunnel::{Config, Target, memory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const Y_BYTES: usize = 256 * 1024 * 1024;
const ROUND_TRIP_EVERY: usize = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_channel_does_not_delay_other_channels_or_commands() {
    let (mut cp, mut agent) = memory::pair(Config::default(), Duration::ZERO);

    // Agent: answers every command at once, and pushes as much as it can
    // into both channels (X's writer blocks on credit, Y's keeps going).
    let agent_conn = agent.connection.clone();
    let commands = tokio::spawn(async move {
        let mut answered = 0u64;
        while let Some(frame) = agent.control.recv().await {
            if let server_frame::Kind::Command(cmd) = frame {
                let result = CommandResult {
                    command_id: cmd.command_id,
                    result: Some(command_result::Result::Ack(CommandAck {})),
                };
                agent_conn
                    .send_control(agent_frame::Kind::CommandResult(result))
                    .unwrap();
                answered += 1;
            }
        }
        answered
    });
    let writers = tokio::spawn(async move {
        let mut x = agent.incoming.recv().await.unwrap().accept().unwrap();
        let mut y = agent.incoming.recv().await.unwrap().accept().unwrap();
        let x_writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0usize;
            // Blocks for good once X's window is full; ends with the session.
            while x.write_all(&chunk).await.is_ok() {
                written += chunk.len();
            }
            written
        });
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..Y_BYTES / chunk.len() {
            y.write_all(&chunk).await.unwrap();
        }
        y.shutdown().await.unwrap();
        (x_writer, y)
    });

    let x = cp.connection.open(Target::new("stalled", 1)).await.unwrap();
    let mut y = cp.connection.open(Target::new("bulk", 2)).await.unwrap();

    // Control plane: read all of Y; after every 32 MiB, one command round
    // trip must complete while X is still stalled.
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0usize;
    let mut checksum = 0u64;
    let mut next_command = ROUND_TRIP_EVERY;
    let mut round_trips = 0u64;
    loop {
        let n = y.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        checksum = buf[..n].iter().fold(checksum, |c, &b| {
            c.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        received += n;
        if received >= next_command {
            next_command += ROUND_TRIP_EVERY;
            round_trips += 1;
            let cmd = server_frame::Kind::Command(Command {
                command_id: round_trips,
                ..Default::default()
            });
            cp.connection.send_control(cmd).unwrap();
            match cp.control.recv().await.unwrap() {
                agent_frame::Kind::CommandResult(r) => assert_eq!(r.command_id, round_trips),
                other => panic!("unexpected control frame {other:?}"),
            }
        }
    }

    // Y arrived whole, and every round trip completed during the transfer.
    assert_eq!(received, Y_BYTES);
    let expected = (0..Y_BYTES).fold(0u64, |c, i| {
        c.wrapping_mul(31)
            .wrapping_add((i % (64 * 1024) % 251) as u64)
    });
    assert_eq!(
        checksum, expected,
        "Y's bytes arrived out of order or corrupted"
    );
    assert_eq!(round_trips, (Y_BYTES / ROUND_TRIP_EVERY) as u64);

    // X is still open and still stalled: its sender stopped at its credit.
    let stats = cp.connection.stats();
    assert_eq!(stats.violations, 0);
    assert!(cp.connection.channel_count() >= 1, "X must still be open");
    assert!(
        cp.connection.committed_window() <= Config::default().receive_budget,
        "memory held for the peer stays within the budget"
    );

    let (x_writer, _y) = writers.await.unwrap();
    assert!(
        !x_writer.is_finished(),
        "X's writer must be blocked on credit, not done"
    );
    cp.connection.close("test over");
    let x_written = x_writer.await.unwrap();
    assert!(
        x_written <= Config::default().initial_window as usize,
        "X's writer got {x_written} bytes out without a reader: more than one window"
    );
    drop(x);
    assert_eq!(commands.await.unwrap(), round_trips);
}
