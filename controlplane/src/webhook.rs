//! The alert webhook: each alert is POSTed as one JSON object, in order,
//! retried with exponential backoff while the receiver fails. Optionally
//! signed: `X-Tether-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//!
//! One delivery at a time keeps alerts in order and the receiver's load
//! bounded; the queue in front (see [`crate::events`]) is bounded too.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ring::hmac;
use secrecy::ExposeSecret;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{config::WebhookConfig, metrics::Metrics, store::EventRecord};

/// Attempts per alert before it is given up (it stays in the event log).
const ATTEMPTS: u32 = 6;
/// First retry delay; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect + TLS + answer, per attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers queued alerts until `cancel` fires.
pub async fn run(
    config: WebhookConfig,
    mut queue: mpsc::Receiver<EventRecord>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let target = match Target::new(&config) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "the alert webhook cannot be used; alerts stay in the event log only");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            e = queue.recv() => match e { Some(e) => e, None => return },
            () = cancel.cancelled() => return,
        };
        let body = Bytes::from(body(&event).to_string());
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, target.post(&event, body.clone()))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")));
            match result {
                Ok(()) => {
                    debug!(event_id = event.id, kind = %event.kind, "alert delivered");
                    metrics.webhook_delivery("delivered");
                    break;
                }
                Err(e) if attempt >= ATTEMPTS => {
                    warn!(event_id = event.id, kind = %event.kind, error = %e, attempts = attempt,
                        "alert webhook delivery failed; giving this alert up (it stays in `tetherctl events`): check that {} answers 2xx",
                        target.shown);
                    metrics.webhook_delivery("failed");
                    break;
                }
                Err(e) => {
                    warn!(event_id = event.id, kind = %event.kind, error = %e, attempt, retry_in = ?backoff,
                        "alert webhook delivery failed; retrying");
                    metrics.webhook_delivery("retried");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }
}

/// The JSON an alert is delivered as.
pub fn body(e: &EventRecord) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "kind": e.kind,
        "alert": e.alert,
        "org_id": e.org_id,
        "agent_id": e.agent_id,
        "pool": e.pool,
        "time_unix_ms": e.time_ms,
        "detail": e.detail,
    })
}

/// A parsed webhook URL and what posting to it needs.
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    key: Option<hmac::Key>,
    /// scheme://host:port/path, never the query (it may hold a token).
    shown: String,
}

impl Target {
    fn new(config: &WebhookConfig) -> Result<Self, String> {
        let uri = config.url.clone();
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut c = tether::tls::client_config(&tether::tls::Trust::System, None)
                .map_err(|e| format!("cannot set up TLS for the webhook: {e}"))?;
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(c)))
        } else {
            None
        };
        let key = config
            .secret
            .as_ref()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose_secret().as_bytes()));
        let shown = format!(
            "{}://{}:{}{}",
            uri.scheme_str().unwrap_or("http"),
            host,
            port,
            uri.path()
        );
        Ok(Self {
            uri,
            host,
            port,
            tls,
            key,
            shown,
        })
    }

    async fn post(&self, event: &EventRecord, body: Bytes) -> Result<(), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.shown))?;
        let _ = tcp.set_nodelay(true);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), ToString::to_string);
        let mut req = Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tether/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-tether-event", event.kind.as_str())
            .header("x-tether-event-id", event.id.to_string());
        if let Some(key) = &self.key {
            let tag = hmac::sign(key, &body);
            req = req.header(
                "x-tether-signature",
                format!("sha256={}", hex::encode(tag.as_ref())),
            );
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let status = match &self.tls {
            None => send(TokioIo::new(tcp), req).await?,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("{:?} is not a valid TLS name: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {} failed: {e}", self.shown))?;
                send(TokioIo::new(stream), req).await?
            }
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", self.shown))
        }
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // Drives the connection; ends with it (after this one request).
    let driver = tokio::spawn(conn);
    let result = sender.send_request(req).await;
    let out = match result {
        Ok(resp) => {
            let status = resp.status();
            // Read (and drop) the body so the receiver sees a clean close.
            let _ = resp.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(format!("the request failed: {e}")),
    };
    driver.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_agent_and_the_kind() {
        let e = EventRecord {
            id: 7,
            org_id: "default".into(),
            agent_id: "a-1".into(),
            pool: "db".into(),
            time_ms: 5,
            kind: "stale".into(),
            detail: "no heartbeat".into(),
            alert: true,
        };
        let b = body(&e);
        assert_eq!(b["id"], 7);
        assert_eq!(b["kind"], "stale");
        assert_eq!(b["agent_id"], "a-1");
    }
}
