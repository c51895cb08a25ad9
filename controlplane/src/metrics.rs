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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    reply: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabels {
    org: String,
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pool: String,
    /// succeeded, failed, retried, cancelled.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgPoolLabels {
    org: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgPoolStateLabels {
    org: String,
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgPoolProblemLabels {
    org: String,
    pool: String,
    problem: String,
}

/// A pool's health at scrape time, from its agents' latest samples.
#[derive(Clone, Debug, Default)]
pub struct PoolSnapshot {
    pub org: String,
    pub pool: String,
    /// Agents by state name (connected, stale, draining, offline, revoked).
    pub states: std::collections::BTreeMap<&'static str, i64>,
    /// Agents whose version or configuration differs from the pin.
    pub drifted: i64,
    /// Agents by reported problem code.
    pub problems: std::collections::BTreeMap<String, i64>,
    /// Highest agent process CPU, fraction of one core.
    pub cpu_max_ratio: Option<f64>,
    /// Largest agent resident memory, bytes.
    pub memory_max_bytes: Option<u64>,
    /// Least free workspace space, bytes.
    pub disk_free_min_bytes: Option<u64>,
    /// Fewest free workspace inodes.
    pub inodes_free_min: Option<u64>,
    /// Earliest certificate expiry, seconds from now.
    pub certificate_expiry_min_seconds: Option<f64>,
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
    socks_requests: Family<ReplyLabels, Counter>,
    heartbeats: Counter,
    heartbeat_rtt: Histogram,
    heartbeat_age_max: Gauge<f64, AtomicU64>,
    stale_agents: Gauge,
    events: Family<KindLabels, Counter>,
    webhook: Family<ResultLabels, Counter>,
    pool_agents: Family<OrgPoolStateLabels, Gauge>,
    pool_drifted: Family<OrgPoolLabels, Gauge>,
    pool_problems: Family<OrgPoolProblemLabels, Gauge>,
    pool_cpu_max: Family<OrgPoolLabels, Gauge<f64, AtomicU64>>,
    pool_memory_max: Family<OrgPoolLabels, Gauge>,
    pool_disk_free_min: Family<OrgPoolLabels, Gauge>,
    pool_inodes_free_min: Family<OrgPoolLabels, Gauge>,
    pool_cert_expiry_min: Family<OrgPoolLabels, Gauge<f64, AtomicU64>>,
    jobs: Family<JobStateLabels, Gauge>,
    job_outcomes: Family<OutcomeLabels, Counter>,
    job_claim: Histogram,
    job_dispatch_delay: Histogram,
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
            socks_requests: Family::default(),
            heartbeats: Counter::default(),
            heartbeat_rtt: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16),
            ),
            heartbeat_age_max: Gauge::default(),
            stale_agents: Gauge::default(),
            events: Family::default(),
            webhook: Family::default(),
            pool_agents: Family::default(),
            pool_drifted: Family::default(),
            pool_problems: Family::default(),
            pool_cpu_max: Family::default(),
            pool_memory_max: Family::default(),
            pool_disk_free_min: Family::default(),
            pool_inodes_free_min: Family::default(),
            pool_cert_expiry_min: Family::default(),
            jobs: Family::default(),
            job_outcomes: Family::default(),
            job_claim: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_1, 2.0, 16,
            )),
            job_dispatch_delay: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_5, 2.0, 20),
            ),
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
            "socks_requests",
            "SOCKS5 front requests, by the reply they got (succeeded or the refusal)",
            inner.socks_requests.clone(),
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
        registry.register(
            "agent_events",
            "Agent events stored, by kind (stale, offline, disk_low, ...)",
            inner.events.clone(),
        );
        registry.register(
            "alert_webhook_deliveries",
            "Alert webhook attempts, by result (delivered, retried, failed, dropped)",
            inner.webhook.clone(),
        );
        registry.register(
            "pool_agents",
            "Enrolled agents by org, pool and state",
            inner.pool_agents.clone(),
        );
        registry.register(
            "pool_agents_drifted",
            "Attached agents whose version or configuration differs from the pool's pin",
            inner.pool_drifted.clone(),
        );
        registry.register(
            "pool_agent_problems",
            "Attached agents refusing work, by problem (disk_low, inodes_low, workspace_not_writable)",
            inner.pool_problems.clone(),
        );
        registry.register(
            "pool_agent_process_cpu_max_ratio",
            "Highest agent process CPU use in the pool, as a fraction of one core",
            inner.pool_cpu_max.clone(),
        );
        registry.register_with_unit(
            "pool_agent_resident_memory_max",
            "Largest agent resident memory in the pool",
            prometheus_client::registry::Unit::Bytes,
            inner.pool_memory_max.clone(),
        );
        registry.register_with_unit(
            "pool_agent_workspace_free_min",
            "Least free space in an agent workspace of the pool",
            prometheus_client::registry::Unit::Bytes,
            inner.pool_disk_free_min.clone(),
        );
        registry.register(
            "pool_agent_workspace_inodes_free_min",
            "Fewest free inodes in an agent workspace of the pool",
            inner.pool_inodes_free_min.clone(),
        );
        registry.register_with_unit(
            "pool_agent_certificate_expiry_min",
            "Time until the earliest agent certificate of the pool expires",
            prometheus_client::registry::Unit::Seconds,
            inner.pool_cert_expiry_min.clone(),
        );
        registry.register(
            "jobs",
            "Jobs waiting or running, by org, pool and state (pending, assigned, running, unschedulable)",
            inner.jobs.clone(),
        );
        registry.register(
            "job_attempts_ended",
            "Job attempts that ended, by pool and outcome (succeeded, failed, retried, cancelled)",
            inner.job_outcomes.clone(),
        );
        registry.register(
            "job_claim_seconds",
            "Time one job claim took in the store",
            inner.job_claim.clone(),
        );
        registry.register(
            "job_dispatch_delay_seconds",
            "From submission to the first assignment to an agent",
            inner.job_dispatch_delay.clone(),
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

    /// The Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics (promtool, curl): counter families are named
    /// with their `_total` suffix, and `# UNIT` and `# EOF` go.
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
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

    /// A SOCKS5 request was answered with `reply`.
    pub fn socks_request(&self, reply: &'static str) {
        self.inner
            .socks_requests
            .get_or_create(&ReplyLabels { reply })
            .inc();
    }

    pub fn heartbeat(&self, rtt_seconds: Option<f64>) {
        self.inner.heartbeats.inc();
        if let Some(rtt) = rtt_seconds {
            self.inner.heartbeat_rtt.observe(rtt);
        }
    }

    /// An agent event was stored.
    pub fn event(&self, kind: &str) {
        self.inner
            .events
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A webhook attempt ended so.
    pub fn webhook_delivery(&self, result: &'static str) {
        self.inner
            .webhook
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A job was claimed for an agent.
    pub fn job_claimed(&self, claim_seconds: f64, attempt: u32, since_submit_ms: i64) {
        self.inner.job_claim.observe(claim_seconds);
        if attempt == 1 {
            self.inner
                .job_dispatch_delay
                .observe(since_submit_ms.max(0) as f64 / 1000.0);
        }
    }

    /// An attempt ended and left the job in `state`.
    pub fn job_finished(&self, pool: &str, state: &str) {
        let outcome = match state {
            "succeeded" => "succeeded",
            "pending" => "retried",
            "cancelled" => "cancelled",
            _ => "failed",
        };
        self.inner
            .job_outcomes
            .get_or_create(&OutcomeLabels {
                pool: pool.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Replaces the job gauges (set at scrape time).
    pub fn set_jobs(&self, counts: &[(String, String, String, u64)]) {
        self.inner.jobs.clear();
        for (org, pool, state, n) in counts {
            self.inner
                .jobs
                .get_or_create(&JobStateLabels {
                    org: org.clone(),
                    pool: pool.clone(),
                    state: state.clone(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Replaces the per-pool gauges (set at scrape time): pools that are
    /// gone disappear.
    pub fn set_pools(&self, pools: &[PoolSnapshot]) {
        let i = &self.inner;
        i.pool_agents.clear();
        i.pool_drifted.clear();
        i.pool_problems.clear();
        i.pool_cpu_max.clear();
        i.pool_memory_max.clear();
        i.pool_disk_free_min.clear();
        i.pool_inodes_free_min.clear();
        i.pool_cert_expiry_min.clear();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for p in pools {
            let labels = OrgPoolLabels {
                org: p.org.clone(),
                pool: p.pool.clone(),
            };
            for (state, n) in &p.states {
                i.pool_agents
                    .get_or_create(&OrgPoolStateLabels {
                        org: p.org.clone(),
                        pool: p.pool.clone(),
                        state,
                    })
                    .set(*n);
            }
            i.pool_drifted.get_or_create(&labels).set(p.drifted);
            for (problem, n) in &p.problems {
                i.pool_problems
                    .get_or_create(&OrgPoolProblemLabels {
                        org: p.org.clone(),
                        pool: p.pool.clone(),
                        problem: problem.clone(),
                    })
                    .set(*n);
            }
            if let Some(v) = p.cpu_max_ratio {
                i.pool_cpu_max.get_or_create(&labels).set(v);
            }
            if let Some(v) = p.memory_max_bytes {
                i.pool_memory_max.get_or_create(&labels).set(int(v));
            }
            if let Some(v) = p.disk_free_min_bytes {
                i.pool_disk_free_min.get_or_create(&labels).set(int(v));
            }
            if let Some(v) = p.inodes_free_min {
                i.pool_inodes_free_min.get_or_create(&labels).set(int(v));
            }
            if let Some(v) = p.certificate_expiry_min_seconds {
                i.pool_cert_expiry_min.get_or_create(&labels).set(v);
            }
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

fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let shown = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str(&format!("# HELP {shown}{text}\n"));
            }
            out.push_str(&format!("# TYPE {shown} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.heartbeat(Some(0.001));
        let text = m.encode_prometheus_text();
        assert!(
            text.contains("# TYPE tether_heartbeats_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP tether_heartbeats_total Heartbeats"),
            "{text}"
        );
        assert!(text.contains("tether_heartbeats_total 1"), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

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
