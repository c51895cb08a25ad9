//! Log output for Tether's binaries: text for a terminal, JSON lines for
//! everything else (journald, Kubernetes, tests that read the lines).

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the event's fields and spans.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected auto, text or json".into()),
        }
    }
}

/// Checks a filter such as `info` or `info,tether_tunnel=debug`.
pub fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s).map(|_| s.to_owned()).map_err(|e| {
        format!("{e}; write a level (error, warn, info, debug, trace) or target=level pairs")
    })
}

/// Installs the global subscriber. Logs go to stdout.
pub fn init(format: Format, filter: &str) {
    init_with(format, filter, None::<tracing_subscriber::layer::Identity>);
}

/// [`init`] with one more layer that sees every event that passes the
/// filter (the agent's ring buffer of recent lines).
pub fn init_with<L>(format: Format, filter: &str, extra: Option<L>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(extra).with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init();
    } else {
        registry.with(fmt::layer()).init();
    }
}
