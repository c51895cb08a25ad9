//! TLS for everything that dials the control plane: the agent, `tetherctl`
//! and the connector runtime's SDK.
//!
//! The control plane speaks gRPC over TLS 1.3 only. A client trusts it in
//! one of three ways ([`Trust`]):
//! - the control plane's CA certificate (a PEM file, e.g. the `ca.pem` that
//!   an embedded control plane writes, or the CA an agent received at
//!   enrollment);
//! - a pin: the SHA-256 of the CA's SubjectPublicKeyInfo, as a join token
//!   carries it (like `kubeadm join --discovery-token-ca-cert-hash`). The
//!   server sends its CA certificate in its chain; the client finds the
//!   certificate with the pinned key there, makes it the only trust anchor
//!   and verifies the chain and the host name against it. A chain without
//!   the pinned key is refused with [`PinMismatch`], which names TLS
//!   inspection as the usual cause;
//! - the system's trust store, for a control plane with a public
//!   certificate.

use std::{fmt, sync::Arc};

use ring::digest;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: what a join token
/// pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The pin of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
                what: "certificate",
                detail: e.to_string(),
            })?;
        Ok(Self::of_spki(cert.tbs_certificate.subject_pki.raw))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parses 64 hex digits, optionally prefixed with `sha256:`.
    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| TlsError::BadPin)?;
        Ok(Self(out))
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a client decides that it talks to the real control plane.
#[derive(Clone, Debug)]
pub enum Trust {
    /// These CA certificates (DER).
    Ca(Vec<CertificateDer<'static>>),
    /// The CA whose key has this pin, found in the server's own chain.
    Pin(Pin),
    /// The operating system's trust store.
    System,
}

impl Trust {
    /// Trust the CA certificates in a PEM file's contents.
    pub fn ca_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                what: "CA bundle",
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::BadCertificate {
                what: "CA bundle",
                detail: "no CERTIFICATE block found".into(),
            });
        }
        Ok(Self::Ca(certs))
    }
}

/// A client certificate and its key, for mTLS.
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key. Never logged.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &format_args!("{} certificates", self.chain.len()))
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                what: "client certificate",
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::BadCertificate {
                what: "client certificate",
                detail: "no CERTIFICATE block found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
            detail: e.to_string(),
        })?;
        Ok(Self { chain, key })
    }
}

/// What can go wrong building a TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or bundle could not be read.
    #[error("cannot read the {what}: {detail}; give a PEM file with BEGIN CERTIFICATE blocks")]
    BadCertificate {
        /// Which input.
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The private key could not be read.
    #[error("cannot read the private key: {detail}; give a PEM PKCS#8, SEC1 or PKCS#1 key")]
    BadKey {
        /// The parser's complaint.
        detail: String,
    },
    /// A pin that is not 64 hex digits.
    #[error("a CA pin must be 64 hex digits, optionally prefixed with sha256:")]
    BadPin,
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The system trust store could not be loaded.
    #[error("cannot load the system trust store: {0}; pass the control plane's CA with --ca-file")]
    SystemRoots(String),
}

/// The crypto provider of the whole tree: ring (one provider only; see
/// research notes §0).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 client configuration with ALPN `h2`, as gRPC needs.
pub fn client_config(trust: &Trust, identity: Option<Identity>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone())?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(|| "no certificates found".to_owned(), ToString::to_string);
                return Err(TlsError::SystemRoots(why));
            }
            builder.with_root_certificates(roots)
        }
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                pin: *pin,
                provider: provider.clone(),
            })),
    };
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's chain holds no certificate with the pinned key.
#[derive(Debug, thiserror::Error)]
#[error(
    "the control plane's certificate chain does not contain the CA pinned in the join token ({expected}); \
     either the address is not this control plane, or a proxy inspects TLS and re-signs the traffic: \
     exempt the control plane's host from TLS inspection, or trust the inspection CA with --ca-file and turn \
     pinning off (--pin-ca false)"
)]
pub struct PinMismatch {
    /// The pin that was expected.
    pub expected: Pin,
}

/// Verifies a server against the CA with a pinned key, taken from the
/// server's own chain. Chain and host name are verified as usual (webpki);
/// only the choice of trust anchor comes from the pin.
#[derive(Debug)]
struct PinnedCa {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| Pin::of_certificate(c).is_ok_and(|p| p == self.pin));
        let Some(anchor) = anchor else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    expected: self.pin,
                }))),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// An error and its causes, looking inside `io::Error`s too (their
/// `source()` skips the error they wrap, which is where rustls' reasons
/// sit).
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut stack = vec![err];
    // Bounded: error chains are short; this stops a cyclic one.
    let mut left = 64;
    std::iter::from_fn(move || {
        let e = stack.pop()?;
        left -= 1;
        if left > 0 {
            if let Some(next) = e.source() {
                stack.push(next);
            }
            if let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                stack.push(inner);
            }
        }
        Some(e)
    })
}

/// A certificate that is not valid at this host's time usually means a
/// wrong clock: says so, with the fix, instead of an opaque TLS failure.
pub fn clock_hint(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    for e in chain(err) {
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired)) =
            e.downcast_ref::<rustls::Error>()
        {
            return Some(
                "the control plane refused this host's certificate as expired (TLS alert): renew it, or re-enroll \
                 with a new join token; if it should still be valid, check this host's clock (NTP)"
                    .into(),
            );
        }
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            let which = match c {
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => "expired",
                rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. } => "not valid yet",
                _ => return None,
            };
            return Some(format!(
                "the TLS certificate is {which} according to this host's clock ({c:?}); check this host's clock \
                 (NTP, e.g. `timedatectl set-ntp true`), or renew the certificate if the clock is right"
            ));
        }
    }
    None
}

/// Finds a [`PinMismatch`] in an error's source chain.
pub fn find_pin_mismatch<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a PinMismatch> {
    for e in chain(err) {
        if let Some(m) = e.downcast_ref::<PinMismatch>() {
            return Some(m);
        }
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && let Some(m) = other.0.downcast_ref::<PinMismatch>()
        {
            return Some(m);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_parses_with_and_without_prefix() {
        let hex64 = "ab".repeat(32);
        let a = Pin::parse(&hex64).unwrap();
        let b = Pin::parse(&format!("sha256:{hex64}")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), format!("sha256:{hex64}"));
        assert!(matches!(Pin::parse("sha256:abc"), Err(TlsError::BadPin)));
        assert!(matches!(
            Pin::parse(&"zz".repeat(32)),
            Err(TlsError::BadPin)
        ));
    }

    #[test]
    fn empty_ca_bundle_is_refused_with_the_fix() {
        let err = Trust::ca_pem(b"not a pem").unwrap_err();
        assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
    }
}
