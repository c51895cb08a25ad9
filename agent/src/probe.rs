//! The probe command: can this agent reach host:port, and what answers
//! there? Steps, each timed: the egress policy (which also resolves the
//! name, only if a rule could allow it), a TCP connect, and optionally a TLS
//! handshake that reports the peer certificate.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tether::proto::{ProbeCommand, ProbeResult, ProbeStep};
use tokio::{net::TcpStream, time::Instant};

use crate::egress::{EgressError, Policy};

/// Longest any one network step may take (within the overall budget).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn step(name: &str, ok: bool, started: Instant, detail: String) -> ProbeStep {
    ProbeStep {
        name: name.into(),
        ok,
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        detail,
    }
}

const ALLOWED: &str = "allowed by this agent's egress_allow";

/// Runs a probe within `budget`; never fails as a whole: a failed step says
/// why (running out of time too), and later steps do not run.
pub async fn run(policy: &Policy, p: ProbeCommand, budget: Duration) -> ProbeResult {
    let deadline = Instant::now() + budget;
    let step_limit = || {
        deadline
            .saturating_duration_since(Instant::now())
            .min(STEP_TIMEOUT)
    };
    let mut steps = Vec::new();
    let failed = |steps: Vec<ProbeStep>| ProbeResult { ok: false, steps };
    let Ok(port) = u16::try_from(p.port) else {
        let why = format!("port {} is not 1-65535", p.port);
        steps.push(step("egress", false, Instant::now(), why));
        return failed(steps);
    };
    // The policy resolves the name only if a rule could allow it.
    let started = Instant::now();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(step_limit(), policy.resolve(&p.host, port)).await {
            Ok(Ok(a)) => {
                steps.push(step("egress", true, started, ALLOWED.into()));
                let shown: Vec<String> = a.iter().map(ToString::to_string).collect();
                let detail = format!("resolved to {}", shown.join(", "));
                steps.push(step("dns", true, started, detail));
                a
            }
            Ok(Err(EgressError::Denied(d))) => {
                steps.push(step("egress", false, started, d.to_string()));
                return failed(steps);
            }
            Ok(Err(e)) => {
                steps.push(step("egress", true, started, ALLOWED.into()));
                steps.push(step("dns", false, started, e.to_string()));
                return failed(steps);
            }
            Err(_) => {
                steps.push(step("egress", true, started, ALLOWED.into()));
                let why = format!("{} did not resolve within {:?}", p.host, started.elapsed());
                steps.push(step("dns", false, started, why));
                return failed(steps);
            }
        };
    let started = Instant::now();
    let mut tcp = None;
    let mut last_err = String::from("no address to connect to");
    for addr in &addrs {
        let limit = step_limit();
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some((s, *addr));
                break;
            }
            Ok(Err(e)) => last_err = format!("{addr}: {e}"),
            Err(_) => {
                last_err = format!(
                    "{addr}: no answer within {limit:?} (a firewall dropping packets, or a full listen queue?)"
                );
            }
        }
    }
    let Some((tcp, addr)) = tcp else {
        steps.push(step("tcp", false, started, last_err));
        return failed(steps);
    };
    steps.push(step("tcp", true, started, format!("connected to {addr}")));
    if !p.tls {
        return ProbeResult { ok: true, steps };
    }
    let started = Instant::now();
    let sni = if p.tls_server_name.is_empty() {
        p.host.clone()
    } else {
        p.tls_server_name.clone()
    };
    let (ok, detail) = tls_step(tcp, &sni, step_limit()).await;
    steps.push(step("tls", ok, started, detail));
    ProbeResult { ok, steps }
}

/// A TLS handshake that records the peer's certificate instead of judging
/// it: the probe reports what is there, trusted or not.
async fn tls_step(tcp: TcpStream, sni: &str, limit: Duration) -> (bool, String) {
    let provider = tether::tls::provider();
    let seen = Arc::new(Mutex::new(None::<CertificateDer<'static>>));
    let recorder = Arc::new(Recorder {
        seen: seen.clone(),
        provider: provider.clone(),
    });
    let config =
        match ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(b) => b
                .dangerous()
                .with_custom_certificate_verifier(recorder)
                .with_no_client_auth(),
            Err(e) => return (false, format!("cannot set up TLS: {e}")),
        };
    let Ok(name) = ServerName::try_from(sni.to_owned()) else {
        return (
            false,
            format!("{sni:?} is not a valid TLS server name; pass --sni"),
        );
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        Err(_) => (false, format!("no TLS handshake within {limit:?}")),
        Ok(Err(e)) => (
            false,
            format!("TLS handshake failed: {e} (is the port speaking TLS?)"),
        ),
        Ok(Ok(stream)) => {
            let version = stream
                .get_ref()
                .1
                .protocol_version()
                .map_or("?".to_owned(), |v| format!("{v:?}"));
            let cert = seen.lock().expect("probe lock poisoned").clone();
            (true, format!("{version}; {}", describe(cert.as_ref())))
        }
    }
}

fn describe(cert: Option<&CertificateDer<'_>>) -> String {
    let Some(cert) = cert else {
        return "no certificate".into();
    };
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, c)) => format!(
            "certificate subject \"{}\", issuer \"{}\", valid until {} (not verified by the probe)",
            c.subject(),
            c.issuer(),
            c.validity().not_after
        ),
        Err(e) => format!("certificate that cannot be parsed: {e}"),
    }
}

#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("probe lock poisoned") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
