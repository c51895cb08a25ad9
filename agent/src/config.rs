//! The agent's settings: flags > `TETHER_*` environment > YAML file
//! (`--config`) > defaults, validated once before anything dials out.
//!
//! The join token is a secret: it comes from `TETHER_JOIN_TOKEN` or a file
//! (`--join-token-file`), never from the command line, where `ps` would show
//! it to every user of the host.

use std::{collections::BTreeMap, path::PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser};
use secrecy::SecretString;
use tether::{
    client::ControlPlaneAddr,
    config::{ConfigError, Layers, Source, parse_size},
    join::JoinToken,
    logging,
    tls::Pin,
};

use crate::{
    egress::Policy,
    health::Thresholds,
    identity::TrustSettings,
    jobs::{self, JobsConfig, credentials},
    recent_logs::{REDACTED, Redactor},
};

/// Every setting, as clap sees it (field names are the YAML keys).
#[derive(Debug, Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether agent: dials out to the control plane and carries channels into this network"
)]
pub struct Args {
    /// YAML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control plane, e.g. https://tether.example:8443.
    #[arg(long, env = "TETHER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Where the agent keeps its identity (id, key, certificate)
    /// [default: tether-agent-state].
    #[arg(long, env = "TETHER_STATE_DIR")]
    pub state_dir: Option<String>,
    /// File holding the join token (or set TETHER_JOIN_TOKEN). Needed only
    /// until the agent has enrolled.
    #[arg(long, env = "TETHER_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<String>,
    /// Destinations this agent may connect to, HOST:PORTS (repeatable or
    /// comma-separated), e.g. 10.0.0.0/8:5432, db.internal:*, *.corp:443.
    /// Everything else is denied.
    #[arg(long = "allow", env = "TETHER_EGRESS_ALLOW", value_delimiter = ',')]
    pub egress_allow: Vec<String>,
    /// PEM file of extra CAs to trust for the control plane (e.g. the CA of
    /// a TLS-inspecting proxy; used when pin_ca is false).
    #[arg(long, env = "TETHER_CA_FILE")]
    pub ca_file: Option<String>,
    /// Pin the control plane's CA: the join token's pin at enrollment, the
    /// CA learned then afterwards. Turn off only to pass TLS inspection
    /// whose CA is in ca_file [default: true].
    #[arg(long, env = "TETHER_PIN_CA")]
    pub pin_ca: Option<String>,
    /// A CA pin (sha256:…) to require instead of the join token's.
    #[arg(long, env = "TETHER_CA_PIN")]
    pub ca_pin: Option<String>,
    /// Clock skew against the control plane beyond which the agent warns
    /// [default: 30s].
    #[arg(long, env = "TETHER_MAX_CLOCK_SKEW")]
    pub max_clock_skew: Option<String>,
    /// Labels, key=value (repeatable or comma-separated).
    #[arg(long = "label", env = "TETHER_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Job handlers, TYPE=/path/to/program (repeatable or comma-separated):
    /// the program reads the payload on stdin, writes the result on stdout
    /// and logs on stderr. The built-ins echo and probe are always there.
    #[arg(long = "handler", env = "TETHER_HANDLERS", value_delimiter = ',')]
    pub handlers: Vec<String>,
    /// Named credentials for jobs, NAME=file:/path or NAME=env:VARIABLE
    /// (repeatable or comma-separated); only the names leave the agent.
    #[arg(long = "credential", env = "TETHER_CREDENTIALS", value_delimiter = ',')]
    pub credentials: Vec<String>,
    /// Jobs this agent runs at once [default: 4].
    #[arg(long, env = "TETHER_MAX_CONCURRENT_JOBS")]
    pub max_concurrent_jobs: Option<String>,
    /// Free space the workspace (state_dir) must keep; below it the agent
    /// takes no new channels or jobs and reports disk_low [default: 64MiB].
    #[arg(long, env = "TETHER_MIN_DISK_FREE")]
    pub min_disk_free: Option<String>,
    /// Free inodes the workspace must keep; below it the agent takes no new
    /// work and reports inodes_low [default: 1000].
    #[arg(long, env = "TETHER_MIN_INODES_FREE")]
    pub min_inodes_free: Option<String>,
    /// Exit for a restart (code 75) when the session loop makes no progress
    /// for this long; 0s turns the watchdog off [default: 2m].
    #[arg(long, env = "TETHER_STUCK_SESSION_TIMEOUT")]
    pub stuck_session_timeout: Option<String>,
    /// auto, text or json [default: auto: text on a terminal].
    #[arg(long, env = "TETHER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or info,tether_tunnel=debug [default: info].
    #[arg(long, env = "TETHER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// Validated settings.
#[derive(Debug)]
pub struct Config {
    /// The control plane.
    pub endpoint: ControlPlaneAddr,
    /// Identity directory.
    pub state_dir: PathBuf,
    /// The join token, if one was given.
    pub join_token: Option<JoinToken>,
    /// Egress policy.
    pub egress: Policy,
    /// How the control plane is trusted.
    pub trust: TrustSettings,
    /// Warn beyond this clock skew.
    pub max_clock_skew: std::time::Duration,
    /// Labels sent in Hello.
    pub labels: BTreeMap<String, String>,
    /// Log format.
    pub log_format: logging::Format,
    /// Log filter.
    pub log_level: String,
    /// Workspace limits below which the agent refuses work.
    pub thresholds: Thresholds,
    /// Watchdog limit (zero: off).
    pub stuck_session_timeout: std::time::Duration,
    /// Handlers, credentials, concurrency.
    pub jobs: JobsConfig,
}

impl Config {
    /// Parses flags and environment, reads the file and the join token,
    /// validates.
    pub fn from_env_and_args() -> Result<Self, ConfigError> {
        let command = Args::command();
        let matches = command.clone().get_matches();
        if let Err(e) = Args::from_arg_matches(&matches) {
            e.exit();
        }
        let env_token = std::env::var("TETHER_JOIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(SecretString::from);
        Self::from_layers(&Layers::load(command, matches, "config")?, env_token)
    }

    /// Validates settings from any layers and an optional token from the
    /// environment (tests build both directly).
    pub fn from_layers(l: &Layers, env_token: Option<SecretString>) -> Result<Self, ConfigError> {
        let endpoint = match l.text("endpoint")? {
            None => return Err(l.missing("endpoint")),
            Some(v) => ControlPlaneAddr::parse(&v.value).map_err(|e| {
                l.invalid("endpoint", v.value.clone(), v.source.clone(), e.to_string())
            })?,
        };
        let state_dir = PathBuf::from(l.parse::<String>("state_dir", "tether-agent-state".into())?);
        // Once enrolled, the token is not needed: a token file that is gone
        // or stale (a Kubernetes Secret deleted after enrollment) must not
        // stop the agent from starting.
        let enrolled = state_dir.join("agent.json").exists();
        let join_token = match (env_token, l.text("join_token_file")?) {
            (Some(token), _) => {
                let parsed = parse_token(&token, Source::Env("TETHER_JOIN_TOKEN".into()));
                if enrolled { parsed.ok() } else { Some(parsed?) }
            }
            (None, Some(file)) => match std::fs::read_to_string(&file.value) {
                Err(_) if enrolled => None,
                Err(e) => {
                    return Err(l.invalid(
                        "join_token_file",
                        file.value.clone(),
                        file.source.clone(),
                        format!("cannot read it: {e}"),
                    ));
                }
                Ok(text) => {
                    let origin = Source::Other(format!(
                        "the join token file {} ({})",
                        file.value, file.source
                    ));
                    let parsed = parse_token(&SecretString::from(text), origin);
                    if enrolled { parsed.ok() } else { Some(parsed?) }
                }
            },
            (None, None) => None,
        };
        let egress = match l.list("egress_allow")? {
            None => Policy::default(),
            Some(v) => {
                Policy::parse(v.value.iter().filter(|r| !r.trim().is_empty())).map_err(|e| {
                    l.invalid(
                        "egress_allow",
                        v.value.join(","),
                        v.source.clone(),
                        e.to_string(),
                    )
                })?
            }
        };
        let pin = l.flag("pin_ca", true)?;
        let ca_file = l.text("ca_file")?.map(|v| PathBuf::from(v.value));
        if !pin && ca_file.is_none() {
            tracing::debug!("pin_ca is off without ca_file: the system trust store decides");
        }
        let ca_pin = match l.text("ca_pin")? {
            None => None,
            Some(v) => Some(Pin::parse(&v.value).map_err(|e| {
                l.invalid("ca_pin", v.value.clone(), v.source.clone(), e.to_string())
            })?),
        };
        let trust = TrustSettings {
            ca_file,
            pin,
            ca_pin,
        };
        let max_clock_skew = l.duration("max_clock_skew", std::time::Duration::from_secs(30))?;
        let mut labels = BTreeMap::new();
        if let Some(v) = l.list("labels")? {
            for item in v.value.iter().filter(|s| !s.is_empty()) {
                let Some((k, val)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                    return Err(l.invalid(
                        "labels",
                        item.clone(),
                        v.source.clone(),
                        "write each label as key=value".into(),
                    ));
                };
                labels.insert(k.to_owned(), val.to_owned());
            }
        }
        let jobs = jobs_config(l)?;
        let defaults = Thresholds::default();
        let thresholds = Thresholds {
            min_disk_free: l.parse_with("min_disk_free", defaults.min_disk_free, parse_size)?,
            min_inodes_free: l.parse("min_inodes_free", defaults.min_inodes_free)?,
        };
        Ok(Self {
            endpoint,
            state_dir,
            join_token,
            egress,
            trust,
            max_clock_skew,
            labels,
            log_format: l.parse("log_format", logging::Format::Auto)?,
            log_level: l.parse_with("log_level", "info".to_owned(), logging::parse_filter)?,
            thresholds,
            stuck_session_timeout: l
                .duration("stuck_session_timeout", std::time::Duration::from_secs(120))?,
            jobs,
        })
    }

    /// The effective settings as YAML, secrets redacted: what the `config`
    /// command returns and what the configuration hash covers. Includes
    /// the proxy from the environment, which changes how the agent dials.
    pub fn effective_yaml(&self) -> String {
        use serde_yaml_ng::Value;
        let text = |s: String| Value::String(s);
        let mut m = BTreeMap::<&str, Value>::new();
        m.insert("endpoint", text(self.endpoint.to_string()));
        m.insert("state_dir", text(self.state_dir.display().to_string()));
        m.insert(
            "egress_allow",
            Value::Sequence(self.egress.describe().into_iter().map(text).collect()),
        );
        if self.join_token.is_some() {
            m.insert("join_token", text(REDACTED.into()));
        }
        if let Some(f) = &self.trust.ca_file {
            m.insert("ca_file", text(f.display().to_string()));
        }
        m.insert("pin_ca", Value::Bool(self.trust.pin));
        if let Some(p) = &self.trust.ca_pin {
            m.insert("ca_pin", text(p.to_string()));
        }
        m.insert("max_clock_skew", text(format!("{:?}", self.max_clock_skew)));
        m.insert(
            "labels",
            Value::Mapping(
                self.labels
                    .iter()
                    .map(|(k, v)| (text(k.clone()), text(v.clone())))
                    .collect(),
            ),
        );
        m.insert("log_level", text(self.log_level.clone()));
        m.insert(
            "handlers",
            Value::Sequence(
                self.jobs
                    .handlers
                    .iter()
                    .map(|(t, p)| text(format!("{t}={}", p.display())))
                    .collect(),
            ),
        );
        // References (file:/path, env:VAR), never values.
        m.insert(
            "credentials",
            Value::Sequence(
                self.jobs
                    .credentials
                    .iter()
                    .map(|(n, s)| text(format!("{n}={}", s.describe())))
                    .collect(),
            ),
        );
        m.insert(
            "max_concurrent_jobs",
            Value::Number(self.jobs.max_concurrent.into()),
        );
        m.insert(
            "min_disk_free",
            Value::Number(self.thresholds.min_disk_free.into()),
        );
        m.insert(
            "min_inodes_free",
            Value::Number(self.thresholds.min_inodes_free.into()),
        );
        m.insert(
            "stuck_session_timeout",
            text(format!("{:?}", self.stuck_session_timeout)),
        );
        let redactor = Redactor::default();
        for var in ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"] {
            if let Ok(v) = std::env::var(var) {
                m.entry(if var.eq_ignore_ascii_case("no_proxy") {
                    "no_proxy"
                } else {
                    "https_proxy"
                })
                .or_insert_with(|| text(redactor.redact(&v)));
            }
        }
        serde_yaml_ng::to_string(&m).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn jobs_config(l: &Layers) -> Result<JobsConfig, ConfigError> {
    let mut handlers = BTreeMap::new();
    if let Some(v) = l.list("handlers")? {
        for item in v.value.iter().filter(|s| !s.trim().is_empty()) {
            let parsed = item
                .split_once('=')
                .ok_or_else(|| "write TYPE=/path/to/program".to_owned())
                .and_then(|(t, p)| {
                    credentials::check_name(t)?;
                    let path = PathBuf::from(p);
                    if !path.is_absolute() {
                        return Err(format!("{p:?} is not an absolute path"));
                    }
                    Ok((t.to_owned(), path))
                });
            let (t, path) =
                parsed.map_err(|why| l.invalid("handlers", item.clone(), v.source.clone(), why))?;
            if jobs::builtin::TYPES.contains(&t.as_str()) {
                return Err(l.invalid(
                    "handlers",
                    item.clone(),
                    v.source.clone(),
                    format!("{t} is a built-in job type; name the handler otherwise"),
                ));
            }
            handlers.insert(t, path);
        }
    }
    let mut creds = BTreeMap::new();
    if let Some(v) = l.list("credentials")? {
        for item in v.value.iter().filter(|s| !s.trim().is_empty()) {
            let (name, source) = credentials::parse(item)
                .map_err(|why| l.invalid("credentials", item.clone(), v.source.clone(), why))?;
            creds.insert(name, source);
        }
    }
    let max_concurrent = l.parse_with("max_concurrent_jobs", 4u32, |s| {
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= 256)
            .ok_or_else(|| "expected a number from 0 (runs no jobs) to 256".to_owned())
    })?;
    Ok(JobsConfig {
        handlers,
        credentials: creds,
        max_concurrent,
    })
}

fn parse_token(token: &SecretString, origin: Source) -> Result<JoinToken, ConfigError> {
    use secrecy::ExposeSecret;
    JoinToken::parse(token.expose_secret()).map_err(|e| ConfigError::Invalid {
        name: "join token".into(),
        // Never echo a secret, even a damaged one.
        value: "[redacted]".into(),
        origin,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        args: &[&str],
        yaml: Option<&str>,
        token: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["tether-agent".to_owned()];
        if let Some(y) = yaml {
            let p = dir.path().join("agent.yaml");
            std::fs::write(&p, y).unwrap();
            argv.extend(["--config".to_owned(), p.display().to_string()]);
        }
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let command = Args::command();
        let matches = command.clone().try_get_matches_from(argv).unwrap();
        Config::from_layers(
            &Layers::load(command, matches, "config")?,
            token.map(|t| SecretString::from(t.to_owned())),
        )
    }

    #[test]
    fn the_endpoint_is_required_with_a_hint() {
        let err = config(&[], None, None).unwrap_err().to_string();
        assert!(
            err.contains("endpoint is required") && err.contains("TETHER_ENDPOINT"),
            "{err}"
        );
    }

    #[test]
    fn egress_rules_come_from_flags_or_the_file() {
        let c = config(
            &[
                "--endpoint",
                "https://cp:8443",
                "--allow",
                "127.0.0.1:5432,db:*",
            ],
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.egress.describe(), ["127.0.0.1:5432", "db:*"]);
        let c = config(
            &[],
            Some("endpoint: https://cp:8443\negress_allow:\n  - 10.0.0.0/8:5432\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.egress.describe(), ["10.0.0.0/8:5432"]);
        let err = config(
            &["--endpoint", "cp", "--allow", "10.0.0.0/33:1"],
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid egress_allow") && err.contains("prefix length 33"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_join_token_is_refused_without_echoing_it() {
        let err = config(
            &["--endpoint", "cp"],
            None,
            Some("tether-join.v1.secret-stuff"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("join token") && !err.contains("secret-stuff"),
            "{err}"
        );
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

    #[test]
    fn an_enrolled_agent_starts_without_its_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("agent.json"), "{}").unwrap();
        let missing = dir.path().join("gone");
        let args = [
            "--endpoint",
            "cp",
            "--state-dir",
            state.to_str().unwrap(),
            "--join-token-file",
            missing.to_str().unwrap(),
        ];
        let c = config(&args, None, None).unwrap();
        assert!(c.join_token.is_none());
        // Not enrolled: the missing file is an error that names it.
        let fresh = dir.path().join("fresh");
        let args = [
            "--endpoint",
            "cp",
            "--state-dir",
            fresh.to_str().unwrap(),
            "--join-token-file",
            missing.to_str().unwrap(),
        ];
        let err = config(&args, None, None).unwrap_err().to_string();
        assert!(
            err.contains("invalid join_token_file") && err.contains("cannot read it"),
            "{err}"
        );
    }
}
