//! Prometheus metrics of the control plane, served on the ops port at
//! `/metrics`.
//!
//! Labels stay low in cardinality: pool, direction, reason, path. Never the
//! agent id, the channel id, the target or the client address: per-agent
//! detail belongs to the Admin API (research notes §7).

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    pool: String,
    /// `to_agent` (client → target) or `from_agent` (target → client).
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenedLabels {
    pool: String,
    /// `gateway` or `dial`.
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// All metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    sessions: Gauge,
    channels_open: Family<PoolLabels, Gauge>,
    channels_opened: Family<OpenedLabels, Counter>,
    channel_bytes: Family<BytesLabels, Counter>,
    dial_errors: Family<ReasonLabels, Counter>,
    tls_failures: Family<ReasonLabels, Counter>,
    heartbeats: Counter,
    heartbeat_rtt: Histogram,
    heartbeat_age_max: Gauge<f64, AtomicU64>,
    stale_agents: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let inner = Inner {
            sessions: Gauge::default(),
            channels_open: Family::default(),
            channels_opened: Family::default(),
            channel_bytes: Family::default(),
            dial_errors: Family::default(),
            tls_failures: Family::default(),
            heartbeats: Counter::default(),
            heartbeat_rtt: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16),
            ),
            heartbeat_age_max: Gauge::default(),
            stale_agents: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "agent_sessions",
            "Agent sessions attached to this replica",
            inner.sessions.clone(),
        );
        registry.register(
            "channels_open",
            "Channels open now, by pool",
            inner.channels_open.clone(),
        );
        registry.register(
            "channels_opened",
            "Channels opened, by pool and path (gateway or dial)",
            inner.channels_opened.clone(),
        );
        registry.register(
            "channel_bytes",
            "Bytes carried by channels, by pool and direction (to_agent, from_agent)",
            inner.channel_bytes.clone(),
        );
        registry.register(
            "dial_errors",
            "Channels that could not be opened, by reason",
            inner.dial_errors.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections to the gRPC port that failed before gRPC, by reason",
            inner.tls_failures.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeats received from agents",
            inner.heartbeats.clone(),
        );
        registry.register(
            "heartbeat_rtt_seconds",
            "Round trip of agent heartbeats as the agents measured them",
            inner.heartbeat_rtt.clone(),
        );
        registry.register(
            "agent_heartbeat_age_max_seconds",
            "Age of the oldest last heartbeat among attached agents",
            inner.heartbeat_age_max.clone(),
        );
        registry.register(
            "agents_stale",
            "Attached agents that missed three heartbeats",
            inner.stale_agents.clone(),
        );
        let inner = Inner { registry, ..inner };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.inner.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn session_attached(&self) {
        self.inner.sessions.inc();
    }

    pub fn session_detached(&self) {
        self.inner.sessions.dec();
    }

    /// A channel opened; the returned guard counts it as open until dropped.
    pub fn channel_opened(&self, pool: &str, path: &'static str) -> OpenChannel {
        self.inner
            .channels_opened
            .get_or_create(&OpenedLabels {
                pool: pool.to_owned(),
                path,
            })
            .inc();
        let gauge = self
            .inner
            .channels_open
            .get_or_create(&PoolLabels {
                pool: pool.to_owned(),
            })
            .clone();
        gauge.inc();
        let bytes = |direction| {
            self.inner
                .channel_bytes
                .get_or_create(&BytesLabels {
                    pool: pool.to_owned(),
                    direction,
                })
                .clone()
        };
        OpenChannel {
            gauge,
            to_agent: bytes("to_agent"),
            from_agent: bytes("from_agent"),
        }
    }

    pub fn dial_error(&self, reason: &str) {
        self.inner
            .dial_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn tls_failure(&self, reason: &str) {
        self.inner
            .tls_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn heartbeat(&self, rtt_seconds: Option<f64>) {
        self.inner.heartbeats.inc();
        if let Some(rtt) = rtt_seconds {
            self.inner.heartbeat_rtt.observe(rtt);
        }
    }

    /// Set at scrape time from the registry of sessions.
    pub fn set_heartbeat_ages(&self, oldest_seconds: f64, stale: i64) {
        self.inner.heartbeat_age_max.set(oldest_seconds);
        self.inner.stale_agents.set(stale);
    }
}

/// Counts one open channel and its bytes; the open count drops with it.
#[derive(Debug)]
pub struct OpenChannel {
    gauge: Gauge,
    to_agent: Counter,
    from_agent: Counter,
}

impl OpenChannel {
    /// Counters for the splice (to the agent, from the agent).
    pub fn byte_counters(&self) -> (Counter, Counter) {
        (self.to_agent.clone(), self.from_agent.clone())
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_channels_are_counted_until_dropped() {
        let m = Metrics::new();
        let ch = m.channel_opened("db-net", "gateway");
        let (to_agent, _) = ch.byte_counters();
        to_agent.inc_by(1234);
        let text = m.encode();
        assert!(
            text.contains("tether_channels_open{pool=\"db-net\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tether_channel_bytes_total{pool=\"db-net\",direction=\"to_agent\"} 1234"
            ),
            "{text}"
        );
        drop(ch);
        assert!(
            m.encode()
                .contains("tether_channels_open{pool=\"db-net\"} 0")
        );
    }
}
