//! Reaching the control plane through an HTTP proxy (`HTTPS_PROXY`,
//! `NO_PROXY`, and their lower-case forms, read the way curl reads them).
//!
//! The tunnel goes through the proxy with HTTP `CONNECT`; TLS runs end to
//! end inside it, so a plain forward proxy sees only the host and port. A
//! proxy that inspects TLS is detected by the CA pin (see [`crate::tls`]).
//! Credentials in the proxy URL (`http://user:password@proxy:3128`) are sent
//! as `Proxy-Authorization: Basic` and never logged.

use std::io;

use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Longest CONNECT response header accepted from a proxy.
const MAX_RESPONSE: usize = 16 * 1024;

/// Which destinations go through which proxy.
pub struct Proxy {
    matcher: Matcher,
}

impl std::fmt::Debug for Proxy {
    // The matcher's own Debug would print proxy credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxy")
    }
}

impl Proxy {
    /// From `HTTPS_PROXY`/`https_proxy`, `ALL_PROXY`/`all_proxy` and
    /// `NO_PROXY`/`no_proxy`.
    pub fn from_env() -> Self {
        Self {
            matcher: Matcher::from_env(),
        }
    }

    /// No proxy at all.
    pub fn none() -> Self {
        Self {
            matcher: Matcher::builder().build(),
        }
    }

    /// The proxy for `host:port`, if one applies.
    fn intercept(&self, host: &str, port: u16) -> Option<Intercept> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let uri: http::Uri = format!("https://{authority}").parse().ok()?;
        self.matcher.intercept(&uri)
    }

    /// The proxy's `host:port` for `host:port`, for logs (no credentials).
    pub fn describe(&self, host: &str, port: u16) -> Option<String> {
        let i = self.intercept(host, port)?;
        let uri = i.uri();
        Some(format!(
            "{}:{}",
            uri.host().unwrap_or("?"),
            uri.port_u16().unwrap_or(80)
        ))
    }

    /// A TCP connection to `host:port`: through the proxy with CONNECT if
    /// one applies, directly otherwise.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let Some(intercept) = self.intercept(host, port) else {
            return TcpStream::connect((host, port)).await;
        };
        let uri = intercept.uri();
        if uri.scheme_str() != Some("http") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only http:// proxies are supported (the tunnel's TLS runs inside CONNECT); set HTTPS_PROXY=http://proxy:port",
            ));
        }
        let proxy_host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let proxy_port = uri.port_u16().unwrap_or(80);
        let mut tcp = TcpStream::connect((proxy_host, proxy_port))
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot reach the proxy {proxy_host}:{proxy_port} (from HTTPS_PROXY): {e}"
                    ),
                )
            })?;
        tcp.set_nodelay(true)?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = intercept.basic_auth().and_then(|v| v.to_str().ok()) {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let status = read_response(&mut tcp).await?;
        match status {
            200..=299 => Ok(tcp),
            // 407 is the standard answer; some proxies (tinyproxy) say 401.
            401 | 407 => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the proxy {proxy_host}:{proxy_port} requires authentication (HTTP {status}); \
                     put the credentials in the URL: HTTPS_PROXY=http://user:password@{proxy_host}:{proxy_port}"
                ),
            )),
            code => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the proxy {proxy_host}:{proxy_port} refused CONNECT to {target} (HTTP {code}); \
                     allow that destination on the proxy, or exempt it with NO_PROXY"
                ),
            )),
        }
    }
}

/// Reads a CONNECT response up to its blank line (byte by byte: nothing
/// after it may be consumed, it belongs to the tunnel) and returns the
/// status code.
async fn read_response(tcp: &mut TcpStream) -> io::Result<u16> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the proxy's CONNECT response is longer than 16 KiB",
            ));
        }
        if tcp.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection during CONNECT",
            ));
        }
        head.push(byte[0]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the proxy answered CONNECT with {:?}, not HTTP/1.x",
                line.trim_end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A one-shot fake proxy that answers CONNECT with `reply` and returns
    /// the request it got.
    async fn fake_proxy(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, h)
    }

    fn proxy_for(port: u16, auth: &str) -> Proxy {
        Proxy {
            matcher: Matcher::builder()
                .https(format!("http://{auth}127.0.0.1:{port}"))
                .build(),
        }
    }

    #[tokio::test]
    async fn connect_sends_the_target_and_basic_auth() {
        let (port, req) = fake_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        proxy_for(port, "alice:s3cret@")
            .connect("cp.example", 8443)
            .await
            .unwrap();
        let req = req.await.unwrap();
        assert!(
            req.starts_with("CONNECT cp.example:8443 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("Proxy-Authorization: Basic YWxpY2U6czNjcmV0"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_407_says_where_the_credentials_go() {
        let (port, _req) = fake_proxy("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let err = proxy_for(port, "")
            .connect("cp.example", 8443)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTPS_PROXY=http://user:password@"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refusal_names_the_target_and_the_fix() {
        let (port, _req) = fake_proxy("HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let err = proxy_for(port, "")
            .connect("cp.example", 8443)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("refused CONNECT to cp.example:8443 (HTTP 403)")
                && msg.contains("NO_PROXY"),
            "{msg}"
        );
    }

    #[test]
    fn no_proxy_exempts_hosts() {
        let p = Proxy {
            matcher: Matcher::builder()
                .https("http://127.0.0.1:3128")
                .no("internal.example")
                .build(),
        };
        assert!(p.describe("cp.example", 8443).is_some());
        assert!(p.describe("cp.internal.example", 8443).is_none());
        assert!(format!("{p:?}") == "Proxy");
    }
}
