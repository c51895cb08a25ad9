//! The target programs, in this process on 127.0.0.1: one server that
//! answers by the first byte a client sends.
//!
//! - `U`: upload. Reads until the client half-closes, answers with the byte
//!   count (8 bytes, little endian).
//! - `D` + 8-byte length: download. Sends that many bytes, then closes.
//! - `E`: echo. Returns every byte until the client half-closes.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Read and write size of the target.
const BUF: usize = 256 * 1024;

/// Starts the target; it runs until the process ends.
pub(crate) async fn start() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = serve(s).await;
            });
        }
    });
    Ok(addr)
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let mut kind = [0u8; 1];
    s.read_exact(&mut kind).await?;
    match kind[0] {
        b'U' => {
            let mut buf = vec![0u8; BUF];
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_le_bytes()).await?;
        }
        b'D' => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len).await?;
            let mut left = u64::from_le_bytes(len);
            let buf = vec![0x5au8; BUF];
            while left > 0 {
                let n = usize::try_from(left.min(BUF as u64)).unwrap_or(BUF);
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
        }
        b'E' => {
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        _ => return Ok(()),
    }
    s.shutdown().await
}
