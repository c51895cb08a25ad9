//! A gRPC channel to the control plane: TCP (no delay), TLS 1.3 done here
//! with rustls (so that pinning and client certificates work the same for
//! every client), HTTP/2 keepalive and windows sized for the tunnel.

use std::{fmt, io, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{proxy::Proxy, read_buffer::ReadBuffer};
use tonic::{
    metadata::MetadataValue,
    service::Interceptor,
    transport::{Channel, Endpoint},
};

/// HTTP/2 keepalive ping interval and timeout (DESIGN.md: 20 s both sides).
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// HTTP/2 stream window: large and fixed, so that the outer stream is never
/// the tunnel's bottleneck (research notes §1, M1).
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 connection window.
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// How long a TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control plane listens: `https://host:port` (the scheme may be
/// left out; the port defaults to 8443).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneAddr {
    /// Host name or IP address, also the TLS server name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A control-plane address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("control plane address {input:?} is not valid: {why}; write it as https://host:port")]
pub struct AddrError {
    input: String,
    why: &'static str,
}

impl ControlPlaneAddr {
    /// Parses `https://host:port`, `host:port` or `[v6]:port`.
    pub fn parse(input: &str) -> Result<Self, AddrError> {
        let err = |why| AddrError {
            input: input.to_owned(),
            why,
        };
        let rest = match input.split_once("://") {
            Some(("https", rest)) => rest,
            Some((_, _)) => return Err(err("only https:// is supported (TLS is always on)")),
            None => input,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(err("a path is not allowed"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(err("unexpected text after ']'")),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is missing"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("the port must be 1-65535"))?,
            None => 8443,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ControlPlaneAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// Dials the control plane (through `HTTPS_PROXY` unless `NO_PROXY`
/// exempts it) and performs the TLS handshake. The channel is lazy: the
/// first call connects, and tonic reconnects after a failure.
pub fn channel(
    addr: &ControlPlaneAddr,
    tls: ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    channel_with(addr, tls, Arc::new(Proxy::from_env()))
}

/// [`channel`] with an explicit proxy choice.
pub fn channel_with(
    addr: &ControlPlaneAddr,
    tls: ClientConfig,
    proxy: Arc<Proxy>,
) -> Result<Channel, tonic::transport::Error> {
    let host = addr.host.clone();
    let port = addr.port;
    let tls = TlsConnector::from(Arc::new(tls));
    // tonic must not add TLS itself: the connector already did.
    let uri = if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    };
    let endpoint = Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .executor(crate::executor::Executor);
    let connector = tower::service_fn(move |_| {
        let host = host.clone();
        let tls = tls.clone();
        let proxy = proxy.clone();
        async move {
            connect_tls(&host, port, &tls, &proxy)
                .await
                .map(TokioIo::new)
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// TCP connect (through the proxy if one applies) with no delay, then the
/// TLS handshake.
pub async fn connect_tls(
    host: &str,
    port: u16,
    tls: &TlsConnector,
    proxy: &Proxy,
) -> io::Result<tokio_rustls::client::TlsStream<ReadBuffer<TcpStream>>> {
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        )
    })?;
    let tcp = proxy.connect(host, port).await?;
    tcp.set_nodelay(true)?;
    tls.connect(server_name, ReadBuffer::new(tcp)).await
}

/// Adds `authorization: Bearer <API key>` to every call.
#[derive(Clone)]
pub struct ApiKey(Arc<SecretString>);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ApiKey {
    /// Wraps a key (e.g. read from `TETHER_API_KEY` or a file; white space
    /// around it is dropped).
    pub fn new(key: SecretString) -> Self {
        let trimmed = key.expose_secret().trim().to_owned();
        Self(Arc::new(SecretString::from(trimmed)))
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0.expose_secret()))
            .map_err(|_| {
                tonic::Status::invalid_argument(
                    "the API key holds characters that cannot go in a header; copy it again",
                )
            })?;
        value.set_sensitive(true);
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// A readable description of a failed call or connection: the status
/// message and the innermost transport cause (refused, TLS, pin).
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    if let Some(pin) = crate::tls::find_pin_mismatch(err) {
        return pin.to_string();
    }
    if let Some(hint) = crate::tls::clock_hint(err) {
        return hint;
    }
    // A status's Display repeats its code and source; its message is what
    // the other side (or the transport) said.
    let head = err
        .downcast_ref::<tonic::Status>()
        .map(|s| s.message().to_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| err.to_string());
    let mut parts = vec![head];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = ControlPlaneAddr::parse("https://cp.example:9443").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("cp.example", 9443));
        assert_eq!(ControlPlaneAddr::parse("127.0.0.1:1").unwrap().port, 1);
        assert_eq!(ControlPlaneAddr::parse("cp.example").unwrap().port, 8443);
        let v6 = ControlPlaneAddr::parse("https://[::1]:8443/").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "https://[::1]:8443");
        for bad in [
            "http://x:1",
            "https://:1",
            "x:0",
            "x:99999",
            "https://x:1/path",
            "[::1",
        ] {
            let err = ControlPlaneAddr::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("https://host:port"),
                "{bad}: {err}"
            );
        }
    }
}
