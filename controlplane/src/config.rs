//! The control plane's settings: flags > `TETHER_*` environment > YAML file
//! (`--config`) > defaults. Validated once, before any socket opens; the rest
//! of the program takes only the validated [`Config`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use tether::{
    config::{ConfigError, Layers, parse_duration},
    logging,
};

/// Every setting, as clap sees it. Field names are the YAML keys; none has
/// a clap default, so that unset flags fall through to the file.
#[derive(Debug, Parser)]
#[command(
    name = "tether-controlplane",
    version,
    about = "Tether control plane: agents dial in, clients reach private targets through them"
)]
pub struct Args {
    /// YAML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the store, the CA and the bootstrap admin key live [default: tether-data].
    #[arg(long, env = "TETHER_DATA_DIR")]
    pub data_dir: Option<String>,
    /// The store: `sqlite` (a file in data_dir) or a PostgreSQL URL,
    /// postgres://user:password@host:5432/db, for several replicas
    /// [default: sqlite].
    #[arg(long, env = "TETHER_STORE")]
    pub store: Option<String>,
    /// gRPC over TLS for agents, Admin and Dial [default: 0.0.0.0:8443].
    #[arg(long, env = "TETHER_LISTEN")]
    pub listen: Option<String>,
    /// Ops HTTP: /healthz, /readyz, /metrics [default: 0.0.0.0:8080].
    #[arg(long, env = "TETHER_OPS_LISTEN")]
    pub ops_listen: Option<String>,
    /// The address agents and clients use, e.g. https://tether.example:8443
    /// [default: https://<first TLS name>:<listen port>].
    #[arg(long, env = "TETHER_PUBLIC_ENDPOINT")]
    pub public_endpoint: Option<String>,
    /// Names and IPs in the generated server certificate (comma-separated)
    /// [default: localhost,127.0.0.1,::1].
    #[arg(long, env = "TETHER_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// Server certificate chain (PEM) to use instead of generating one.
    #[arg(long, env = "TETHER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<String>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "TETHER_TLS_KEY_FILE")]
    pub tls_key_file: Option<String>,
    /// CA certificate (PEM) that signs agent certificates, instead of the
    /// embedded CA (e.g. from cert-manager).
    #[arg(long, env = "TETHER_CA_CERT_FILE")]
    pub ca_cert_file: Option<String>,
    /// Private key (PEM) of --ca-cert-file.
    #[arg(long, env = "TETHER_CA_KEY_FILE")]
    pub ca_key_file: Option<String>,
    /// File with the admin API key to create when the store has none (e.g.
    /// a Kubernetes Secret); by default one is generated into the data
    /// directory (admin.key).
    #[arg(long, env = "TETHER_BOOTSTRAP_API_KEY_FILE")]
    pub bootstrap_api_key_file: Option<String>,
    /// How often agents send a heartbeat [default: 10s].
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Clock skew of an agent beyond which it is reported [default: 30s].
    #[arg(long, env = "TETHER_MAX_CLOCK_SKEW")]
    pub max_clock_skew: Option<String>,
    /// Lifetime of agent certificates; agents renew at two thirds [default: 7d].
    #[arg(long, env = "TETHER_AGENT_CERT_LIFETIME")]
    pub agent_cert_lifetime: Option<String>,
    /// Allow gateway listeners on non-loopback addresses [default: false].
    #[arg(long, env = "TETHER_GATEWAY_ALLOW_EXTERNAL")]
    pub gateway_allow_external: Option<String>,
    /// SOCKS5 front for clients without code changes (username: the pool
    /// or connection:NAME, password: an API key): a port, which binds
    /// 127.0.0.1, or ip:port [default: off].
    #[arg(long, env = "TETHER_SOCKS_LISTEN")]
    pub socks_listen: Option<String>,
    /// How long shutdown waits for open channels [default: 30s].
    #[arg(long, env = "TETHER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Most concurrent gRPC streams per connection (Dial streams) [default: 4096].
    #[arg(long, env = "TETHER_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<String>,
    /// URL that alerts (agent stale, offline, clock skew, certificate
    /// expiring, disk or inodes low) are POSTed to as JSON, retried with
    /// backoff [default: none].
    #[arg(long, env = "TETHER_ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,
    /// File with a secret that signs each webhook body (HMAC-SHA256 in the
    /// X-Tether-Signature header) [default: unsigned].
    #[arg(long, env = "TETHER_ALERT_WEBHOOK_SECRET_FILE")]
    pub alert_webhook_secret_file: Option<String>,
    /// Alert when an agent's certificate expires within this [default: 2d].
    #[arg(long, env = "TETHER_ALERT_CERTIFICATE_EXPIRY")]
    pub alert_certificate_expiry: Option<String>,
    /// How often an agent's health sample is kept in its history [default: 1m].
    #[arg(long, env = "TETHER_HEALTH_HISTORY_INTERVAL")]
    pub health_history_interval: Option<String>,
    /// Health samples kept per agent [default: 60].
    #[arg(long, env = "TETHER_HEALTH_HISTORY_SAMPLES")]
    pub health_history_samples: Option<String>,
    /// How long finished jobs (with their logs) are kept [default: 7d].
    #[arg(long, env = "TETHER_JOB_RETENTION")]
    pub job_retention: Option<String>,
    /// How long agent events are kept [default: 30d].
    #[arg(long, env = "TETHER_EVENT_RETENTION")]
    pub event_retention: Option<String>,
    /// auto, text or json [default: auto: text on a terminal].
    #[arg(long, env = "TETHER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or info,tether_tunnel=debug [default: info].
    #[arg(long, env = "TETHER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Which store.
    pub store: StoreSetting,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Ops HTTP listen address.
    pub ops_listen: SocketAddr,
    /// Advertised address; `None` = derived from the bound port.
    pub public_endpoint: Option<String>,
    /// Names in the generated server certificate.
    pub tls_names: Vec<String>,
    /// Supplied server certificate and key.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Supplied CA certificate and key.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Supplied bootstrap admin key file.
    pub bootstrap_api_key_file: Option<PathBuf>,
    /// Agent heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Agent certificate lifetime.
    pub agent_cert_lifetime: Duration,
    /// Reported clock skew.
    pub max_clock_skew: Duration,
    /// Gateway listeners (and the SOCKS5 front) may bind non-loopback
    /// addresses.
    pub gateway_allow_external: bool,
    /// The SOCKS5 front's address, if it runs.
    pub socks_listen: Option<SocketAddr>,
    /// Shutdown wait for open channels.
    pub drain_timeout: Duration,
    /// HTTP/2 max concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Where alerts go.
    pub alert_webhook: Option<WebhookConfig>,
    /// Certificate-expiry alert threshold.
    pub alert_certificate_expiry: Duration,
    /// Health history spacing.
    pub health_history_interval: Duration,
    /// Health samples kept per agent.
    pub health_history_samples: u32,
    /// Event retention.
    pub event_retention: Duration,
    /// Finished-job retention.
    pub job_retention: Duration,
    /// Log format.
    pub log_format: logging::Format,
    /// Log filter.
    pub log_level: String,
    /// Tunnel limits (defaults of DESIGN.md).
    pub tunnel: tether_tunnel::Config,
}

impl Config {
    /// Parses flags and environment, reads the file, validates.
    pub fn from_env_and_args() -> Result<Self, ConfigError> {
        let command = Args::command();
        let matches = command.clone().get_matches();
        // Parse once through clap's derive to get its own checks and help.
        if let Err(e) = Args::from_arg_matches(&matches) {
            e.exit();
        }
        Self::from_layers(&Layers::load(command, matches, "config")?)
    }

    /// Validates settings from any layers (tests build them directly).
    pub fn from_layers(l: &Layers) -> Result<Self, ConfigError> {
        let data_dir = PathBuf::from(l.parse::<String>("data_dir", "tether-data".into())?);
        let store = match l.text("store")? {
            None => StoreSetting::Sqlite,
            Some(v) => StoreSetting::parse(&v.value).map_err(|why| {
                // Never echo the URL: it may hold a password.
                l.invalid("store", StoreSetting::shown(&v.value), v.source, why)
            })?,
        };
        let listen = l.parse_with("listen", SocketAddr::from(([0, 0, 0, 0], 8443)), parse_addr)?;
        let ops_listen = l.parse_with(
            "ops_listen",
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            parse_addr,
        )?;
        let public_endpoint = match l.text("public_endpoint")? {
            None => None,
            Some(v) => {
                tether::client::ControlPlaneAddr::parse(&v.value).map_err(|e| {
                    l.invalid(
                        "public_endpoint",
                        v.value.clone(),
                        v.source.clone(),
                        e.to_string(),
                    )
                })?;
                Some(v.value)
            }
        };
        let tls_names = match l.list("tls_names")? {
            Some(v) if !v.value.is_empty() => {
                if let Some(bad) = v
                    .value
                    .iter()
                    .find(|n| n.trim().is_empty() || n.contains(char::is_whitespace))
                {
                    return Err(l.invalid(
                        "tls_names",
                        bad.clone(),
                        v.source,
                        "a name must not be empty or contain spaces".into(),
                    ));
                }
                v.value
            }
            _ => vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        };
        let tls_files = pair(l, "tls_cert_file", "tls_key_file")?;
        let ca_files = pair(l, "ca_cert_file", "ca_key_file")?;
        let heartbeat_interval =
            l.parse_with("heartbeat_interval", Duration::from_secs(10), |s| {
                within(
                    parse_duration(s)?,
                    Duration::from_millis(100),
                    Duration::from_secs(600),
                    "between 100ms and 10m",
                )
            })?;
        // Lifetimes of seconds are for tests and demonstrations of renewal.
        let agent_cert_lifetime = l.parse_with(
            "agent_cert_lifetime",
            Duration::from_secs(7 * 86_400),
            |s| {
                within(
                    parse_duration(s)?,
                    Duration::from_secs(5),
                    Duration::from_secs(400 * 86_400),
                    "between 5s and 400d",
                )
            },
        )?;
        let max_clock_skew = l.parse_with("max_clock_skew", Duration::from_secs(30), |s| {
            within(
                parse_duration(s)?,
                Duration::from_millis(100),
                Duration::from_secs(86_400),
                "between 100ms and 1d",
            )
        })?;
        let max_concurrent_streams = l.parse_with("max_concurrent_streams", 4096u32, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| "expected a number from 1 to 1000000".to_owned())
        })?;
        let alert_webhook = match l.text("alert_webhook_url")? {
            None => None,
            Some(v) => {
                let url = v.value.parse::<http::Uri>().ok().filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                let Some(url) = url else {
                    return Err(l.invalid(
                        "alert_webhook_url",
                        v.value,
                        v.source,
                        "expected an http:// or https:// URL with a host, e.g. https://hooks.example/tether".into(),
                    ));
                };
                let secret = match l.text("alert_webhook_secret_file")? {
                    None => None,
                    Some(f) => {
                        let text = std::fs::read_to_string(&f.value).map_err(|e| {
                            l.invalid(
                                "alert_webhook_secret_file",
                                f.value.clone(),
                                f.source.clone(),
                                format!("cannot read it: {e}"),
                            )
                        })?;
                        let secret = text.trim().to_owned();
                        if secret.len() < 16 {
                            return Err(l.invalid(
                                "alert_webhook_secret_file",
                                f.value,
                                f.source,
                                "the secret must be at least 16 characters".into(),
                            ));
                        }
                        Some(secrecy::SecretString::from(secret))
                    }
                };
                Some(WebhookConfig { url, secret })
            }
        };
        let gateway_allow_external = l.flag("gateway_allow_external", false)?;
        let socks_listen = match l.text("socks_listen")? {
            None => None,
            Some(v) => {
                let addr = parse_socks_listen(&v.value).map_err(|why| {
                    l.invalid("socks_listen", v.value.clone(), v.source.clone(), why)
                })?;
                if !addr.ip().is_loopback() && !gateway_allow_external {
                    return Err(l.invalid(
                        "socks_listen",
                        v.value,
                        v.source,
                        "a non-loopback address exposes the front beyond this host; set gateway_allow_external: true as well, or bind 127.0.0.1".into(),
                    ));
                }
                Some(addr)
            }
        };
        let health_history_samples = l.parse_with("health_history_samples", 60u32, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| "expected a number from 1 to 10000".to_owned())
        })?;
        Ok(Self {
            store,
            alert_webhook,
            alert_certificate_expiry: l
                .duration("alert_certificate_expiry", Duration::from_secs(2 * 86_400))?,
            health_history_interval: l.parse_with(
                "health_history_interval",
                Duration::from_secs(60),
                |s| {
                    within(
                        parse_duration(s)?,
                        Duration::from_millis(100),
                        Duration::from_secs(86_400),
                        "between 100ms and 1d",
                    )
                },
            )?,
            health_history_samples,
            job_retention: l.parse_with("job_retention", Duration::from_secs(7 * 86_400), |s| {
                within(
                    parse_duration(s)?,
                    Duration::from_secs(60),
                    Duration::from_secs(3650 * 86_400),
                    "between 1m and 3650d",
                )
            })?,
            event_retention: l.parse_with(
                "event_retention",
                Duration::from_secs(30 * 86_400),
                |s| {
                    within(
                        parse_duration(s)?,
                        Duration::from_secs(60),
                        Duration::from_secs(3650 * 86_400),
                        "between 1m and 3650d",
                    )
                },
            )?,
            data_dir,
            listen,
            ops_listen,
            public_endpoint,
            tls_names,
            tls_files,
            ca_files,
            bootstrap_api_key_file: l
                .text("bootstrap_api_key_file")?
                .map(|v| PathBuf::from(v.value)),
            heartbeat_interval,
            agent_cert_lifetime,
            max_clock_skew,
            gateway_allow_external,
            socks_listen,
            drain_timeout: l.duration("drain_timeout", Duration::from_secs(30))?,
            max_concurrent_streams,
            log_format: l.parse("log_format", logging::Format::Auto)?,
            log_level: l.parse_with("log_level", "info".to_owned(), logging::parse_filter)?,
            tunnel: tether_tunnel::Config::default(),
        })
    }
}

/// The store backend.
#[derive(Clone, Debug)]
pub enum StoreSetting {
    /// `tether.db` in the data directory.
    Sqlite,
    /// A PostgreSQL URL (a secret: it may hold a password).
    Postgres(secrecy::SecretString),
}

impl StoreSetting {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "sqlite" {
            return Ok(Self::Sqlite);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let rest = s.split_once("://").map_or("", |(_, r)| r);
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            if host.is_empty() || host.starts_with('/') {
                return Err(
                    "the URL has no host; write postgres://user:password@host:5432/db".into(),
                );
            }
            return Ok(Self::Postgres(secrecy::SecretString::from(s.to_owned())));
        }
        Err("expected sqlite or a URL postgres://user:password@host:5432/db".into())
    }

    /// The value with any password masked, for messages.
    pub fn shown(s: &str) -> String {
        match s.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split_once(':').map_or(user, |(u, _)| u);
                    format!("{scheme}://{user}:[redacted]@{host}")
                }
                None => s.to_owned(),
            },
            None => s.to_owned(),
        }
    }
}

/// Where alerts are POSTed, and the signing secret.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// http:// or https:// URL.
    pub url: http::Uri,
    /// HMAC-SHA256 key for the X-Tether-Signature header.
    pub secret: Option<secrecy::SecretString>,
}

fn within(d: Duration, min: Duration, max: Duration, what: &str) -> Result<Duration, String> {
    if d < min || d > max {
        return Err(format!("must be {what}"));
    }
    Ok(d)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected ip:port, e.g. 0.0.0.0:8443 or 127.0.0.1:0 for any free port".into())
}

/// A port alone binds the loopback address: the front is for this host
/// unless asked otherwise.
fn parse_socks_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.trim().parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.trim()
        .parse()
        .map_err(|_| "expected a port (binds 127.0.0.1), or ip:port such as 127.0.0.1:1080".into())
}

/// Two settings that go together (a certificate and its key).
fn pair(l: &Layers, cert: &str, key: &str) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (l.text(cert)?, l.text(key)?) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((PathBuf::from(c.value), PathBuf::from(k.value)))),
        (Some(c), None) => {
            Err(l.invalid(cert, c.value, c.source, format!("{key} must be set too")))
        }
        (None, Some(k)) => {
            Err(l.invalid(key, k.value, k.source, format!("{cert} must be set too")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str], yaml: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["tether-controlplane".to_owned()];
        if let Some(y) = yaml {
            let p = dir.path().join("cp.yaml");
            std::fs::write(&p, y).unwrap();
            argv.extend(["--config".to_owned(), p.display().to_string()]);
        }
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let command = Args::command();
        let matches = command.clone().try_get_matches_from(argv).unwrap();
        Config::from_layers(&Layers::load(command, matches, "config")?)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&[], None).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.ops_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.agent_cert_lifetime, Duration::from_secs(7 * 86_400));
        assert!(!c.gateway_allow_external);
        assert_eq!(c.socks_listen, None);
    }

    #[test]
    fn the_socks_front_binds_loopback_unless_told_otherwise() {
        let c = config(&["--socks-listen", "1080"], None).unwrap();
        assert_eq!(c.socks_listen, Some("127.0.0.1:1080".parse().unwrap()));
        let c = config(&[], Some("socks_listen: 127.0.0.1:0\n")).unwrap();
        assert_eq!(c.socks_listen, Some("127.0.0.1:0".parse().unwrap()));
        let err = config(&["--socks-listen", "0.0.0.0:1080"], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("socks") && err.contains("gateway_allow_external"),
            "{err}"
        );
        let c = config(
            &[
                "--socks-listen",
                "0.0.0.0:1080",
                "--gateway-allow-external",
                "true",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.socks_listen, Some("0.0.0.0:1080".parse().unwrap()));
        let err = config(&["--socks-listen", "localhost:x"], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a port"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let c = config(
            &["--listen", "127.0.0.1:0"],
            Some("listen: 127.0.0.1:9\nheartbeat_interval: 2s\n"),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_setting_and_the_fix() {
        let err = config(&["--listen", "8443"], None).unwrap_err().to_string();
        assert!(
            err.contains("invalid listen")
                && err.contains("flag --listen")
                && err.contains("ip:port"),
            "{err}"
        );
        let err = config(&[], Some("heartbeat_interval: 1ms\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 100ms and 10m"), "{err}");
        let err = config(&["--tls-cert-file", "c.pem"], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_key_file must be set too"), "{err}");
        let err = config(&[], Some("listne: 1\n")).unwrap_err().to_string();
        assert!(err.contains("unknown key \"listne\""), "{err}");
    }

    #[test]
    fn every_setting_is_in_the_configuration_reference() {
        let doc = include_str!("../../docs/configuration.md");
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                doc.contains(&format!("`{id}`")),
                "docs/configuration.md does not document `{id}`"
            );
        }
    }
}
