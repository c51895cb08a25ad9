//! One measurement each, against any address: the target directly, or a
//! gateway port in front of it. Every loop is bounded by its count.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, ensure};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

const CHUNK: usize = 256 * 1024;

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `bytes` to the target; the time until the target confirmed them.
pub(crate) async fn upload(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let mut s = connect(addr).await?;
    let chunk = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    s.write_all(b"U").await?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let elapsed = start.elapsed();
    ensure!(
        u64::from_le_bytes(count) == bytes,
        "the target received a different byte count"
    );
    Ok(elapsed)
}

/// Receives `bytes` from the target; the time until the last one.
pub(crate) async fn download(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let mut s = connect(addr).await?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    s.write_all(b"D").await?;
    s.write_all(&bytes.to_le_bytes()).await?;
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    ensure!(got == bytes, "received {got} of {bytes} bytes");
    Ok(elapsed)
}

/// 64-byte round trips on one connection: `warmup` unmeasured, then
/// `count` measured.
pub(crate) async fn round_trips(
    addr: SocketAddr,
    warmup: usize,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut s = connect(addr).await?;
    s.write_all(b"E").await?;
    let ping = [0x42u8; 64];
    let mut pong = [0u8; 64];
    let mut out = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        s.write_all(&ping).await?;
        s.read_exact(&mut pong).await?;
        if i >= warmup {
            out.push(start.elapsed());
        }
    }
    Ok(out)
}

/// One short connection: open, echo one byte, close.
async fn one_connection(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = connect(addr).await?;
    s.write_all(b"Ex").await?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await?;
    s.shutdown().await?;
    Ok(())
}

/// New connections per second: `count` in total, `workers` at a time.
pub(crate) async fn connection_rate(
    addr: SocketAddr,
    count: usize,
    workers: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let per_worker = count / workers;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    one_connection(addr).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((per_worker * workers) as f64 / start.elapsed().as_secs_f64())
}

/// Opens `count` connections that each echoed one byte and stay open.
pub(crate) async fn idle(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = connect(addr).await?;
        s.write_all(b"Ex").await?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await?;
        out.push(s);
    }
    Ok(out)
}
