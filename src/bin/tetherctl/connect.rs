//! How tetherctl reaches the control plane: address, trust, API key.
//!
//! Explicit flags and `TETHER_*` variables win. Otherwise, on the control
//! plane's own host, `--data-dir` (default `tether-data`, the control
//! plane's default) supplies the CA certificate (`ca.pem`) and the bootstrap
//! admin key (`admin.key`) that an embedded control plane writes there.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use secrecy::SecretString;
use tether::{
    client::{self, ApiKey, ControlPlaneAddr},
    proto::admin_client::AdminClient,
    tls::{self, Pin, Trust},
};
use tonic::{codegen::InterceptedService, transport::Channel};

/// The control plane's default data directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "tether-data";

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The control plane's gRPC address.
    #[arg(
        long,
        global = true,
        env = "TETHER_ENDPOINT",
        default_value = "https://127.0.0.1:8443"
    )]
    pub(crate) endpoint: String,
    /// PEM file with the control plane's CA certificate.
    #[arg(long, global = true, env = "TETHER_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Trust the control plane by the SHA-256 pin of its CA key instead.
    #[arg(long, global = true, env = "TETHER_CA_PIN")]
    pub(crate) ca_pin: Option<String>,
    /// File holding the API key (or set TETHER_API_KEY).
    #[arg(long, global = true, env = "TETHER_API_KEY_FILE")]
    pub(crate) api_key_file: Option<PathBuf>,
    /// The control plane's data directory on this host, for ca.pem and
    /// admin.key when the options above are not given.
    #[arg(long, global = true, env = "TETHER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

pub(crate) type Admin = AdminClient<InterceptedService<Channel, ApiKey>>;

impl ConnectArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    pub(crate) fn trust(&self) -> anyhow::Result<Trust> {
        if let Some(pin) = &self.ca_pin {
            return Ok(Trust::Pin(Pin::parse(pin).context("--ca-pin")?));
        }
        let file = match &self.ca_file {
            Some(f) => f.clone(),
            None => {
                let f = self.data_dir().join("ca.pem");
                if !f.exists() {
                    bail!(
                        "no CA to trust the control plane with: pass --ca-file (or TETHER_CA_FILE), \
                         --ca-pin, or --data-dir pointing at the control plane's data directory \
                         ({} has no ca.pem)",
                        self.data_dir().display()
                    );
                }
                f
            }
        };
        let pem = read(&file, "CA file")?;
        Trust::ca_pem(&pem).with_context(|| format!("CA file {}", file.display()))
    }

    pub(crate) fn api_key(&self) -> anyhow::Result<ApiKey> {
        // The key comes from the environment or a file, never from argv.
        if let Ok(key) = std::env::var("TETHER_API_KEY")
            && !key.trim().is_empty()
        {
            return Ok(ApiKey::new(SecretString::from(key)));
        }
        let file = match &self.api_key_file {
            Some(f) => f.clone(),
            None => {
                let f = self.data_dir().join("admin.key");
                if !f.exists() {
                    bail!(
                        "no API key: set TETHER_API_KEY, pass --api-key-file, or --data-dir pointing \
                         at the control plane's data directory ({} has no admin.key)",
                        self.data_dir().display()
                    );
                }
                f
            }
        };
        let text = String::from_utf8(read(&file, "API key file")?)
            .with_context(|| format!("API key file {} is not text", file.display()))?;
        Ok(ApiKey::new(SecretString::from(text)))
    }

    pub(crate) fn channel(&self) -> anyhow::Result<Channel> {
        let addr = ControlPlaneAddr::parse(&self.endpoint)?;
        let config = tls::client_config(&self.trust()?, None)?;
        Ok(client::channel(&addr, config)?)
    }

    pub(crate) fn admin(&self) -> anyhow::Result<Admin> {
        Ok(AdminClient::with_interceptor(
            self.channel()?,
            self.api_key()?,
        ))
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Turns a failed call into an error that says what the control plane said
/// and, for the common cases, what to do.
pub(crate) fn status(what: &str, s: tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unavailable => {
            "; is the control plane running and is --endpoint (TETHER_ENDPOINT) right?"
        }
        tonic::Code::Unauthenticated => "; check the API key (TETHER_API_KEY or --api-key-file)",
        _ => "",
    };
    anyhow::anyhow!(
        "{what}: {} ({:?}){hint}",
        client::describe_error(&s),
        s.code()
    )
}
