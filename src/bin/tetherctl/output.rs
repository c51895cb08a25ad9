//! Printing results: aligned tables for people, JSON for scripts. The only
//! module that writes to stdout.

#![allow(clippy::print_stdout)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Rows with a header, printed as a table or as a JSON array of objects.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn print(&self, format: Format) {
        match format {
            Format::Json => {
                let items: Vec<serde_json::Value> = self
                    .rows
                    .iter()
                    .map(|r| {
                        let map = self
                            .header
                            .iter()
                            .zip(r)
                            .map(|(h, v)| {
                                (
                                    h.to_lowercase().replace(' ', "_"),
                                    serde_json::Value::from(v.as_str()),
                                )
                            })
                            .collect();
                        serde_json::Value::Object(map)
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            }
            Format::Table => {
                let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
                for r in &self.rows {
                    for (w, c) in widths.iter_mut().zip(r) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let line = |cells: Vec<&str>| {
                    let parts: Vec<String> = cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    println!("{}", parts.join("  ").trim_end());
                };
                line(self.header.clone());
                for r in &self.rows {
                    line(r.iter().map(String::as_str).collect());
                }
                if self.rows.is_empty() {
                    println!("(none)");
                }
            }
        }
    }
}

/// Prints key/value pairs (one object).
pub(crate) fn fields(format: Format, pairs: &[(&str, String)]) {
    match format {
        Format::Json => {
            let map = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(v.as_str())))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        }
        Format::Table => {
            let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in pairs {
                println!("{k:<w$}  {v}");
            }
        }
    }
}

/// Prints one line of text (messages, a join token).
pub(crate) fn line(text: &str) {
    println!("{text}");
}

/// A Unix-millisecond time as "2026-11-25 10:00:00Z (3m ago)"; "-" for 0.
pub(crate) fn time(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let Ok(ms) = u64::try_from(unix_ms) else {
        return "-".into();
    };
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let rel = match SystemTime::now().duration_since(at) {
        Ok(ago) => format!("{} ago", human(ago)),
        Err(e) => format!("in {}", human(e.duration())),
    };
    format!("{} ({rel})", utc(ms / 1000))
}

/// Bytes as "1.5 GiB", "300.0 MiB", "17 B".
pub(crate) fn bytes(n: u64) -> String {
    tether::config::format_size(n)
}

/// A duration as "3s", "5m", "2h", "4d".
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (civil-from-days,
/// proleptic Gregorian), so no date crate is needed for display.
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's days-to-civil algorithm, in unsigned arithmetic
    // (dates before 1970 never occur here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_795_602_600), "2026-11-25 10:30:00Z");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(3 * 86_400)), "3d");
    }
}
