//! Named credentials: configured on the agent as `NAME=file:/path` or
//! `NAME=env:VARIABLE`, read when a job needs them, handed to its handler
//! (a file-sourced value as a 0600 file, an environment-sourced one as a
//! variable) and never sent anywhere: only their names leave the agent.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use secrecy::{ExposeSecret, SecretBox};

/// Where a credential's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file on the agent's host (read at each use, so rotation works).
    File(PathBuf),
    /// A variable of the agent's environment.
    Env(String),
}

impl Source {
    /// How the configuration shows it (a reference, never the value).
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("file:{}", p.display()),
            Source::Env(v) => format!("env:{v}"),
        }
    }
}

/// Parses `NAME=file:/path` or `NAME=env:VAR`.
pub fn parse(spec: &str) -> Result<(String, Source), String> {
    let (name, source) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: write NAME=file:/path or NAME=env:VARIABLE"))?;
    check_name(name)?;
    let source = if let Some(p) = source.strip_prefix("file:") {
        if p.is_empty() {
            return Err(format!("{spec:?}: the file path is empty"));
        }
        Source::File(PathBuf::from(p))
    } else if let Some(v) = source.strip_prefix("env:") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{spec:?}: {v:?} is not an environment variable name"
            ));
        }
        Source::Env(v.to_owned())
    } else {
        return Err(format!(
            "{spec:?}: the source must start with file: or env:, e.g. ssh_key=file:/etc/tether/id_ed25519"
        ));
    };
    Ok((name.to_owned(), source))
}

/// Credential and job type names: what the control plane accepts.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1-64 letters, digits, '.', '-' or '_'"
        ))
    }
}

/// The variable a credential reaches its handler in: `TETHER_CREDENTIAL_`
/// and the name in capitals (`-` and `.` become `_`).
pub fn variable(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("TETHER_CREDENTIAL_{upper}")
}

/// Reads a credential's value, exactly as stored (a key file keeps its
/// final newline: OpenSSH refuses its own key format without it).
pub fn read(name: &str, source: &Source) -> Result<SecretBox<Vec<u8>>, String> {
    match source {
        Source::File(p) => std::fs::read(p)
            .map(|v| SecretBox::new(Box::new(v)))
            .map_err(|e| {
                format!(
                    "credential {name} cannot be read from {}: {e}; fix the file or the agent's credential setting",
                    p.display()
                )
            }),
        Source::Env(v) => std::env::var(v)
            .map(|v| SecretBox::new(Box::new(v.into_bytes())))
            .map_err(|_| format!("credential {name}: the agent's environment has no {v}")),
    }
}

/// Removes the credential copies a killed agent left behind (its handlers
/// could not remove them); called when the agent starts.
pub fn clear_leftovers(tmp_dir: &Path) {
    match std::fs::remove_dir_all(tmp_dir) {
        Ok(()) => {
            tracing::info!(dir = %tmp_dir.display(), "removed credential copies left by an earlier run")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %tmp_dir.display(), error = %e, "cannot remove credential copies left by an earlier run")
        }
    }
}

/// Files written for one job's handler; removed when dropped.
#[derive(Debug, Default)]
pub struct Handed {
    pub env: BTreeMap<String, String>,
    files: Vec<PathBuf>,
}

impl Drop for Handed {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Prepares the credentials `names` for a handler: variables and 0600
/// files under `tmp_dir`. `on_value` sees each value (to register it with
/// the log redactor).
pub fn hand_over(
    names: &[String],
    configured: &BTreeMap<String, Source>,
    tmp_dir: &Path,
    job_id: &str,
    on_value: impl Fn(&str),
) -> Result<Handed, String> {
    let mut handed = Handed::default();
    for name in names {
        let source = configured.get(name).ok_or_else(|| {
            format!(
                "this agent has no credential {name}; configure it (--credential {name}=file:/path, or under `credentials:`)"
            )
        })?;
        let value = read(name, source)?;
        // The redactor masks the value as text, without a final newline.
        let text = String::from_utf8_lossy(value.expose_secret());
        let masked = text.trim_end_matches(['\n', '\r']);
        if !masked.is_empty() {
            on_value(masked);
        }
        match source {
            Source::Env(_) => {
                handed.env.insert(variable(name), text.into_owned());
            }
            Source::File(_) => {
                std::fs::create_dir_all(tmp_dir)
                    .map_err(|e| format!("cannot create {}: {e}", tmp_dir.display()))?;
                let path = tmp_dir.join(format!("{job_id}-{name}"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| {
                        format!("cannot write the credential file {}: {e}", path.display())
                    })?;
                handed.files.push(path.clone());
                f.write_all(value.expose_secret()).map_err(|e| {
                    format!("cannot write the credential file {}: {e}", path.display())
                })?;
                handed.env.insert(
                    format!("{}_FILE", variable(name)),
                    path.display().to_string(),
                );
            }
        }
    }
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn specs_parse_with_clear_errors() {
        assert_eq!(
            parse("ssh_key=file:/etc/k").unwrap(),
            ("ssh_key".into(), Source::File("/etc/k".into()))
        );
        assert_eq!(
            parse("db_password=env:DB_PW").unwrap().1,
            Source::Env("DB_PW".into())
        );
        assert!(parse("k=/etc/k").unwrap_err().contains("file: or env:"));
        assert!(
            parse("bad name=env:X")
                .unwrap_err()
                .contains("not a valid name")
        );
        assert!(parse("k").unwrap_err().contains("NAME=file:"));
        assert_eq!(variable("https-pat"), "TETHER_CREDENTIAL_HTTPS_PAT");
    }

    #[test]
    fn files_are_private_and_removed_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, "s3cret\n").unwrap();
        let configured = BTreeMap::from([("key".to_owned(), Source::File(src))]);
        let seen = std::sync::Mutex::new(Vec::new());
        let tmp = dir.path().join("tmp");
        let handed = hand_over(&["key".into()], &configured, &tmp, "job-1", |v| {
            seen.lock().unwrap().push(v.to_owned());
        })
        .unwrap();
        let path = PathBuf::from(&handed.env["TETHER_CREDENTIAL_KEY_FILE"]);
        // Byte for byte: a key file keeps its final newline.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(*seen.lock().unwrap(), ["s3cret"]);
        drop(handed);
        assert!(!path.exists());
        let err = hand_over(&["nope".into()], &configured, &tmp, "job-2", |_| {}).unwrap_err();
        assert!(err.contains("no credential nope"), "{err}");
    }

    #[test]
    fn copies_left_by_a_killed_agent_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("job-credentials");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("job-1-key"), "left behind").unwrap();
        clear_leftovers(&tmp);
        assert!(!tmp.exists());
        // Nothing to remove is fine too.
        clear_leftovers(&tmp);
    }
}
