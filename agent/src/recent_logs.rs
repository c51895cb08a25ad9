//! Recent log lines, kept in memory for the "logs" command, with secrets
//! redacted as they are captured: the buffer never holds a secret, so
//! nothing that reads it can leak one.
//!
//! Bounded by line count and bytes; older lines go first.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use regex::Regex;
use tether::proto::LogLine;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{Layer, layer::Context};

/// Most lines kept.
const MAX_LINES: usize = 2000;
/// Most bytes kept over all lines.
const MAX_BYTES: usize = 1024 * 1024;
/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;
/// What a secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Masks secrets in text: Tether tokens and keys, private keys in PEM,
/// `Authorization` values, `password=`-style pairs, passwords in URLs, and
/// any value registered as a secret (credential values).
#[derive(Debug)]
pub struct Redactor {
    patterns: Vec<(Regex, &'static str)>,
    known: Mutex<Vec<String>>,
}

impl Default for Redactor {
    fn default() -> Self {
        let rules: [(&str, &'static str); 6] = [
            // Join tokens and API keys: keep the public id, drop the secret.
            (
                r"(tether-(?:join|key)\.v1\.[0-9a-f]{16}\.)[0-9a-fA-F]{8,}",
                "${1}[redacted]",
            ),
            (
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
                "[redacted private key]",
            ),
            (
                r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)(?:(?:bearer|basic|token)\s+)?[^\s,;]+",
                "${1}[redacted]",
            ),
            (r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", "${1}[redacted]"),
            (
                r#"(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)"#,
                "${1}[redacted]",
            ),
            // user:password@ in URLs and connection strings.
            (
                r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@",
                "${1}:[redacted]@",
            ),
        ];
        let patterns = rules
            .into_iter()
            .map(|(re, with)| {
                (
                    Regex::new(re).expect("the redaction patterns are valid"),
                    with,
                )
            })
            .collect();
        Self {
            patterns,
            known: Mutex::new(Vec::new()),
        }
    }
}

impl Redactor {
    /// Masks this exact value wherever it appears from now on (a
    /// credential's value). Values shorter than 4 bytes are ignored: they
    /// would mask ordinary text.
    pub fn add_secret(&self, value: &str) {
        if value.len() >= 4 {
            self.known
                .lock()
                .expect("redactor lock poisoned")
                .push(value.to_owned());
        }
    }

    /// The text with every secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in self.known.lock().expect("redactor lock poisoned").iter() {
            out = out.replace(v.as_str(), REDACTED);
        }
        for (re, with) in &self.patterns {
            out = re.replace_all(&out, *with).into_owned();
        }
        out
    }
}

#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped: bool,
}

/// The ring buffer and the layer that fills it.
#[derive(Clone, Default)]
pub struct RecentLogs {
    buffer: Arc<Mutex<Buffer>>,
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for RecentLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentLogs")
    }
}

impl RecentLogs {
    /// The redactor, to register credential values with.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn push(&self, mut line: LogLine) {
        if line.message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.message.is_char_boundary(cut) {
                cut -= 1;
            }
            line.message.truncate(cut);
            line.message.push_str(" [cut]");
        }
        let mut b = self.buffer.lock().expect("log buffer lock poisoned");
        b.bytes += line.message.len();
        b.lines.push_back(line);
        while b.lines.len() > MAX_LINES || b.bytes > MAX_BYTES {
            match b.lines.pop_front() {
                Some(old) => b.bytes -= old.message.len(),
                None => break,
            }
            b.dropped = true;
        }
    }

    /// Up to `max` lines at or after `since_ms`, oldest first, and whether
    /// older lines were dropped.
    pub fn tail(&self, max: usize, since_ms: i64) -> (Vec<LogLine>, bool) {
        let b = self.buffer.lock().expect("log buffer lock poisoned");
        let matching: Vec<&LogLine> = b
            .lines
            .iter()
            .filter(|l| l.time_unix_ms >= since_ms)
            .collect();
        let skip = matching.len().saturating_sub(max);
        (
            matching.into_iter().skip(skip).cloned().collect(),
            b.dropped || skip > 0,
        )
    }
}

/// Collects an event's message and fields as `message k=v k=v`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentLogs {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.push(LogLine {
            time_unix_ms,
            level: meta.level().to_string(),
            target: meta.target().to_owned(),
            message: self
                .redactor
                .redact(&format!("{}{}", line.message, line.fields)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_secret_is_masked() {
        let r = Redactor::default();
        r.add_secret("hunter2-credential");
        let cases = [
            (
                "join tether-join.v1.0123456789abcdef.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bb",
                "aaaaaaaa",
            ),
            (
                "key tether-key.v1.0123456789abcdef.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
                "cccccccc",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----",
                "MIGHAgEA",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAbcdefghijklmnop",
                "MHcCAQEE",
            ),
            (
                "header Authorization: Bearer abcdef1234567890",
                "abcdef1234567890",
            ),
            ("proxy-authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("connect password=s3cr3tpw host=db", "s3cr3tpw"),
            (
                "dsn postgres://app:pa55word@db.internal:5432/orders",
                "pa55word",
            ),
            ("api_key: \"quoted secret value\"", "quoted secret"),
            (
                "the credential is hunter2-credential here",
                "hunter2-credential",
            ),
        ];
        for (input, secret) in cases {
            let out = r.redact(input);
            assert!(!out.contains(secret), "{input:?} -> {out:?}");
            assert!(out.contains("redacted"), "{input:?} -> {out:?}");
        }
        // Ordinary text is left alone.
        assert_eq!(
            r.redact("channel 12 opened to db.internal:5432"),
            "channel 12 opened to db.internal:5432"
        );
        assert!(r.redact("tether-key.v1.0123456789abcdef.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc").contains("0123456789abcdef"));
    }

    #[test]
    fn secrets_logged_through_tracing_never_reach_the_buffer() {
        use tracing_subscriber::prelude::*;
        let logs = RecentLogs::default();
        logs.redactor().add_secret("cred-value-8841");
        let join = "tether-join.v1.0123456789abcdef.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bb";
        let key = "tether-key.v1.fedcba9876543210.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----";
        let subscriber = tracing_subscriber::registry().with(logs.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(token = join, "enrolling with {join}");
            tracing::info!(api_key = key, "calling with key {key}");
            tracing::error!(pem, "bad key material");
            tracing::info!(header = "Authorization: Bearer zzzzzzzzzzzz1234", "request");
            tracing::info!("connect password=pw-in-message-77 host=db");
            tracing::info!(dsn = "mysql://app:dsn-pass-55@db:3306/x", "dialing");
            tracing::info!(value = "cred-value-8841", "credential loaded");
        });
        let (lines, _) = logs.tail(100, 0);
        assert_eq!(lines.len(), 7);
        let all: String = lines.iter().map(|l| format!("{}\n", l.message)).collect();
        for secret in [
            "aaaaaaaaaaaa",
            "cccccccccccc",
            "MIGHAgEAMBMG",
            "zzzzzzzzzzzz1234",
            "pw-in-message-77",
            "dsn-pass-55",
            "cred-value-8841",
        ] {
            assert!(!all.contains(secret), "{secret} leaked:\n{all}");
        }
        // The public parts still help: token ids, hosts.
        assert!(
            all.contains("0123456789abcdef") && all.contains("host=db"),
            "{all}"
        );
    }

    #[test]
    fn the_buffer_is_bounded_and_tails_newest_last() {
        let logs = RecentLogs::default();
        for i in 0..(MAX_LINES + 10) {
            logs.push(LogLine {
                time_unix_ms: i64::try_from(i).unwrap(),
                level: "INFO".into(),
                target: "t".into(),
                message: format!("line {i}"),
            });
        }
        let (lines, truncated) = logs.tail(5, 0);
        assert!(truncated);
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines.last().unwrap().message,
            format!("line {}", MAX_LINES + 9)
        );
        let (since, _) = logs.tail(10_000, i64::try_from(MAX_LINES).unwrap());
        assert_eq!(since.len(), 10);
        logs.push(LogLine {
            message: "x".repeat(MAX_LINE * 2),
            ..Default::default()
        });
        let (last, _) = logs.tail(1, 0);
        assert!(last[0].message.len() <= MAX_LINE + 6);
    }
}
