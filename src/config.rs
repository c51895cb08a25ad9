//! Layered configuration for Tether's binaries: flags > `TETHER_*`
//! environment > YAML file > defaults.
//!
//! Each setting has one name, used everywhere: the YAML key `heartbeat_interval`,
//! the flag `--heartbeat-interval` and the variable
//! `TETHER_HEARTBEAT_INTERVAL`. A binary declares its settings with clap
//! (field name = YAML key, `env = "TETHER_…"`), all optional and without
//! clap defaults, so that an unset flag falls through to the file and then
//! to the binary's default. Every error names the setting and where its
//! value came from, so that an operator can find the line to fix.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{ArgMatches, Command, parser::ValueSource};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A key of the YAML file.
    File {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The built-in default.
    Default,
    /// Anything else, described in words (e.g. "the join token file x").
    Other(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File { path, key } => write!(f, "key {key} in {}", path.display()),
            Source::Default => f.write_str("the default"),
            Source::Other(what) => f.write_str(what),
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read or parsed.
    #[error("cannot read the configuration file {}: {detail}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A key the binary does not know (a typo, most likely).
    #[error(
        "unknown key {key:?} in {}; valid keys are: {}",
        path.display(),
        valid.join(", ")
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The keys this binary knows.
        valid: Vec<String>,
    },
    /// A value that does not parse or fails a check.
    #[error("invalid {name} {value:?} (from {origin}): {why}")]
    Invalid {
        /// The setting.
        name: String,
        /// The value as given (never a secret: secrets are not read through here).
        value: String,
        /// Where it came from.
        origin: Source,
        /// What is wrong and the fix.
        why: String,
    },
    /// A required setting with no value.
    #[error("{name} is required: {hint}")]
    Missing {
        /// The setting.
        name: String,
        /// How to set it.
        hint: String,
    },
}

/// A value with its origin.
#[derive(Clone, Debug)]
pub struct Value<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// Flags and environment (through clap), and the YAML file.
pub struct Layers {
    command: Command,
    matches: ArgMatches,
    file: Option<(PathBuf, BTreeMap<String, serde_yaml_ng::Value>)>,
}

impl Layers {
    /// Reads the YAML file named by the setting `config_key` (if any) and
    /// checks that it holds only known keys: the ids of `command`'s
    /// arguments.
    pub fn load(
        command: Command,
        matches: ArgMatches,
        config_key: &str,
    ) -> Result<Self, ConfigError> {
        let path = matches.get_one::<PathBuf>(config_key).cloned();
        let file = match path {
            None => None,
            Some(path) => Some((path.clone(), read_yaml(&path, &command, config_key)?)),
        };
        Ok(Self {
            command,
            matches,
            file,
        })
    }

    /// The flag and variable of a setting, for messages.
    fn names(&self, key: &str) -> (String, String) {
        let arg = self.command.get_arguments().find(|a| a.get_id() == key);
        let flag = arg.and_then(|a| a.get_long()).map_or_else(
            || format!("--{}", key.replace('_', "-")),
            |l| format!("--{l}"),
        );
        let env = arg
            .and_then(|a| a.get_env())
            .map_or_else(String::new, |e| e.to_string_lossy().into_owned());
        (flag, env)
    }

    fn cli_source(&self, key: &str) -> Option<Source> {
        let (flag, env) = self.names(key);
        match self.matches.value_source(key)? {
            ValueSource::CommandLine => Some(Source::Flag(flag)),
            ValueSource::EnvVariable => Some(Source::Env(env)),
            _ => None,
        }
    }

    /// A single value as text: flag or environment, else the file.
    pub fn text(&self, key: &str) -> Result<Option<Value<String>>, ConfigError> {
        if let Some(source) = self.cli_source(key) {
            let value = self
                .matches
                .get_raw(key)
                .and_then(|mut v| v.next())
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(Some(Value { value, source }));
        }
        let Some((path, map)) = &self.file else {
            return Ok(None);
        };
        let Some(v) = map.get(key) else {
            return Ok(None);
        };
        let source = Source::File {
            path: path.clone(),
            key: key.to_owned(),
        };
        let value = scalar(v).ok_or_else(|| ConfigError::Invalid {
            name: key.to_owned(),
            value: format!("{v:?}"),
            origin: source.clone(),
            why: "expected a single value (text or number)".into(),
        })?;
        Ok(Some(Value { value, source }))
    }

    /// A list: repeated flags or a comma-separated variable, else a YAML
    /// sequence (or one string) in the file.
    pub fn list(&self, key: &str) -> Result<Option<Value<Vec<String>>>, ConfigError> {
        if let Some(source) = self.cli_source(key) {
            let value = self
                .matches
                .get_raw(key)
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            return Ok(Some(Value { value, source }));
        }
        let Some((path, map)) = &self.file else {
            return Ok(None);
        };
        let Some(v) = map.get(key) else {
            return Ok(None);
        };
        let source = Source::File {
            path: path.clone(),
            key: key.to_owned(),
        };
        let value = match v {
            serde_yaml_ng::Value::Sequence(items) => {
                items.iter().map(scalar).collect::<Option<Vec<_>>>()
            }
            other => scalar(other).map(|s| vec![s]),
        }
        .ok_or_else(|| ConfigError::Invalid {
            name: key.to_owned(),
            value: format!("{v:?}"),
            origin: source.clone(),
            why: "expected a list of text values".into(),
        })?;
        Ok(Some(Value { value, source }))
    }

    /// A value parsed with `FromStr`, or `default`.
    pub fn parse<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_with(key, default, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    /// A value parsed with `f`, or `default`.
    pub fn parse_with<T>(
        &self,
        key: &str,
        default: T,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.text(key)? {
            None => Ok(default),
            Some(v) => f(v.value.trim()).map_err(|why| self.invalid(key, v.value, v.source, why)),
        }
    }

    /// A duration (`500ms`, `10s`, `5m`, `1h`, `7d`), or `default`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse_with(key, default, parse_duration)
    }

    /// A boolean (`true`/`false`), or `default`.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.parse_with(key, default, |s| match s {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err("expected true or false".into()),
        })
    }

    /// The error for a value that failed a check after parsing.
    pub fn invalid(&self, key: &str, value: String, source: Source, why: String) -> ConfigError {
        ConfigError::Invalid {
            name: key.to_owned(),
            value,
            origin: source,
            why,
        }
    }

    /// The error for a required value nobody set.
    pub fn missing(&self, key: &str) -> ConfigError {
        let (flag, env) = self.names(key);
        ConfigError::Missing {
            name: key.to_owned(),
            hint: format!("pass {flag}, set {env}, or put {key}: in the configuration file"),
        }
    }
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_yaml(
    path: &Path,
    command: &Command,
    config_key: &str,
) -> Result<BTreeMap<String, serde_yaml_ng::Value>, ConfigError> {
    let err = |detail: String| ConfigError::File {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, serde_yaml_ng::Value> = serde_yaml_ng::from_str(&text)
        .map_err(|e| err(format!("{e}; the file must be a YAML mapping of settings")))?;
    let valid: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().as_str().to_owned())
        .filter(|id| id != config_key && id != "help" && id != "version")
        .collect();
    if let Some(key) = map.keys().find(|k| !valid.contains(k)) {
        return Err(ConfigError::UnknownKey {
            path: path.to_owned(),
            key: key.clone(),
            valid,
        });
    }
    Ok(map)
}

/// Parses `500ms`, `90s`, `30m`, `24h` or `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration; write a number with ms, s, m, h or d, e.g. 10s");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

/// A size for people: "1.5 GiB", "300.0 MiB", "17 B".
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses a size in bytes: `1048576`, `512KiB`, `256MiB`, `2GiB`, `1TiB`
/// (or the decimal `kB`, `MB`, `GB`, `TB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "{s:?} is not a size; write a number with an optional unit (KiB, MiB, GiB, TiB, kB, MB, GB, TB), e.g. 512MiB"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(factor).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn command() -> Command {
        Command::new("t")
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .env("TETHER_TEST_CONFIG_LISTEN_UNSET"),
            )
            .arg(
                Arg::new("names")
                    .long("names")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(Arg::new("interval").long("interval"))
    }

    fn layers(args: &[&str], yaml: Option<&str>) -> Result<Layers, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["t".to_owned()];
        if let Some(y) = yaml {
            let p = dir.path().join("c.yaml");
            std::fs::write(&p, y).unwrap();
            argv.push("--config".into());
            argv.push(p.display().to_string());
        }
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let cmd = command();
        let matches = cmd.clone().try_get_matches_from(argv).unwrap();
        Layers::load(cmd, matches, "config")
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let l = layers(
            &["--listen", "1.2.3.4:1"],
            Some("listen: 5.6.7.8:2\ninterval: 5s\n"),
        )
        .unwrap();
        let v = l.text("listen").unwrap().unwrap();
        assert_eq!(v.value, "1.2.3.4:1");
        assert_eq!(v.source, Source::Flag("--listen".into()));
        assert_eq!(
            l.duration("interval", Duration::ZERO).unwrap(),
            Duration::from_secs(5)
        );
        let l = layers(&[], None).unwrap();
        assert_eq!(
            l.duration("interval", Duration::from_secs(9)).unwrap(),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn lists_come_from_flags_or_yaml_sequences() {
        let l = layers(&["--names", "a,b"], None).unwrap();
        assert_eq!(l.list("names").unwrap().unwrap().value, ["a", "b"]);
        let l = layers(&[], Some("names: [x, y]\n")).unwrap();
        assert_eq!(l.list("names").unwrap().unwrap().value, ["x", "y"]);
    }

    #[test]
    fn errors_name_the_setting_and_its_source() {
        let Err(err) = layers(&[], Some("lisen: 1\n")) else {
            panic!("a typo must be refused")
        };
        let msg = err.to_string();
        assert!(
            msg.contains("unknown key \"lisen\"") && msg.contains("listen"),
            "{msg}"
        );

        let l = layers(&[], Some("interval: soon\n")).unwrap();
        let msg = l
            .duration("interval", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("invalid interval") && msg.contains("key interval in"),
            "{msg}"
        );
        assert!(msg.contains("e.g. 10s"), "{msg}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("e.g. 512MiB")
        );
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(format_size(17), "17 B");
        assert_eq!(format_size(300 << 20), "300.0 MiB");
    }
}
