//! Watches this replica's agents and turns changes into events: connected,
//! stale (no heartbeat for three intervals), recovered, offline (gone for
//! longer than a grace period, so a quick restart or reconnect does not
//! page anyone), and the alerts read from health samples: clock skew,
//! certificate expiring, workspace problems. (Drain and undrain are told
//! where they happen, in the Admin calls.)

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::{
    events::{self, Kind, Subject},
    registry::LiveSession,
    state::{Shared, now_ms},
};

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Connected,
    Stale,
}

/// What the watcher last saw of an agent.
#[derive(Debug)]
struct Tracked {
    subject: Subject,
    session_id: String,
    seen: Seen,
    problem: String,
    skew_alerted: bool,
    cert_alerted_for: i64,
    gone_since: Option<Instant>,
}

fn seen_of(s: &LiveSession, interval: Duration) -> Seen {
    if s.is_stale(interval) {
        Seen::Stale
    } else {
        Seen::Connected
    }
}

/// Runs until the control plane shuts down.
pub async fn run(state: Shared) {
    let interval = state.config.heartbeat_interval;
    let every = (interval / 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let grace = (interval * 3).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut next_prune = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.cancel.cancelled() => return,
        }
        scan(&state, &mut tracked, interval, grace).await;
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            let before = now_ms().saturating_sub(
                i64::try_from(state.config.event_retention.as_millis()).unwrap_or(i64::MAX),
            );
            match state.store.prune_events(before).await {
                Ok(n) if n > 0 => debug!(pruned = n, "old agent events removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune old agent events"),
            }
        }
    }
}

async fn scan(
    state: &Shared,
    tracked: &mut HashMap<String, Tracked>,
    interval: Duration,
    grace: Duration,
) {
    let live = state.registry.matching(|s| !s.connection.is_closed());
    for s in &live {
        let id = &s.agent_id;
        let seen = seen_of(s, interval);
        let t = match tracked.get_mut(id) {
            Some(t) => t,
            None => {
                let subject = Subject {
                    org_id: s.org_id.clone(),
                    agent_id: id.clone(),
                    pool: s.pool.clone(),
                };
                let detail = format!(
                    "session {} from {} (agent {} on {})",
                    s.session_id,
                    s.peer.map_or_else(|| "?".into(), |p| p.to_string()),
                    s.hello.version,
                    s.hello.hostname
                );
                events::emit(state, &subject, Kind::Connected, detail).await;
                tracked.entry(id.clone()).or_insert(Tracked {
                    subject,
                    session_id: s.session_id.clone(),
                    seen: Seen::Connected,
                    problem: String::new(),
                    skew_alerted: false,
                    cert_alerted_for: 0,
                    gone_since: None,
                })
            }
        };
        t.gone_since = None;
        if t.session_id != s.session_id {
            // Reattached within the grace period: a new session, the same
            // agent; alerts that are per session may fire again.
            t.session_id.clone_from(&s.session_id);
            t.skew_alerted = false;
        }
        transition(state, t, seen, interval).await;
        check_sample(state, t, s).await;
    }
    let live_ids: HashSet<&str> = live.iter().map(|s| s.agent_id.as_str()).collect();
    let gone: Vec<String> = tracked
        .keys()
        .filter(|id| !live_ids.contains(id.as_str()))
        .cloned()
        .collect();
    for id in gone {
        let Some(t) = tracked.get_mut(&id) else {
            continue;
        };
        let since = *t.gone_since.get_or_insert_with(Instant::now);
        if since.elapsed() < grace {
            continue;
        }
        let Some(t) = tracked.remove(&id) else {
            continue;
        };
        // Another replica may hold the agent now (its heartbeats reach the
        // store), and a revoked agent was reported as such already.
        match state.store.get_agent(&id).await {
            Ok(Some(rec)) if rec.revoked_ms != 0 => continue,
            Ok(Some(rec))
                if now_ms().saturating_sub(rec.last_heartbeat_ms)
                    < i64::try_from((interval * 3).as_millis()).unwrap_or(i64::MAX) =>
            {
                continue;
            }
            Ok(None) => continue,
            _ => {}
        }
        let detail = format!(
            "no session for {} s; the agent process, its host or its network is down — check the agent's \
             service (systemctl status tether-agent, kubectl get pods) and its outbound access to the control plane",
            since.elapsed().as_secs()
        );
        events::emit(state, &t.subject, Kind::Offline, detail).await;
    }
}

async fn transition(state: &Shared, t: &mut Tracked, seen: Seen, interval: Duration) {
    if t.seen == seen {
        return;
    }
    let before = t.seen;
    t.seen = seen;
    let (kind, detail) = match (before, seen) {
        (_, Seen::Stale) => (
            Kind::Stale,
            format!(
                "no heartbeat for more than {:?} (three intervals) while the session is up; the agent may be \
                 overloaded, paused or cut off — see `tetherctl agents get {}`",
                interval * 3,
                t.subject.agent_id
            ),
        ),
        (_, Seen::Connected) => (Kind::Recovered, "heartbeats arrive again".to_owned()),
    };
    events::emit(state, &t.subject, kind, detail).await;
}

async fn check_sample(state: &Shared, t: &mut Tracked, s: &LiveSession) {
    let hb = s.heartbeat();
    let limit = i64::try_from(state.config.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    if hb.clock_skew_ms.abs() > limit && !t.skew_alerted {
        t.skew_alerted = true;
        let direction = if hb.clock_skew_ms > 0 {
            "ahead of"
        } else {
            "behind"
        };
        let detail = format!(
            "the agent's clock is {:.1} s {direction} the control plane's (limit {:?}); fix the agent host's \
             clock (NTP, e.g. `timedatectl set-ntp true`): certificates and leases depend on it",
            hb.clock_skew_ms.unsigned_abs() as f64 / 1000.0,
            state.config.max_clock_skew
        );
        events::emit(state, &t.subject, Kind::ClockSkew, detail).await;
    }
    let Some(sample) = hb.sample else {
        return;
    };
    if sample.problem_code != t.problem {
        let (kind, detail) = if sample.problem_code.is_empty() {
            (
                Kind::ProblemCleared,
                format!(
                    "the {} problem is over; the agent takes work again",
                    t.problem
                ),
            )
        } else {
            (Kind::problem(&sample.problem_code), sample.problem.clone())
        };
        t.problem.clone_from(&sample.problem_code);
        events::emit(state, &t.subject, kind, detail).await;
    }
    let not_after = sample.certificate_not_after_unix_ms;
    let threshold =
        i64::try_from(state.config.alert_certificate_expiry.as_millis()).unwrap_or(i64::MAX);
    let left = not_after.saturating_sub(now_ms());
    if not_after > 0 && left < threshold && t.cert_alerted_for != not_after {
        t.cert_alerted_for = not_after;
        let detail = if left <= 0 {
            "the agent's certificate has expired; re-enroll it with a new join token".to_owned()
        } else {
            format!(
                "the agent's certificate expires in {} s and was not renewed (renewal runs at two thirds of its \
                 lifetime); check `tetherctl agents logs {}` for renewal errors, or re-enroll it",
                left / 1000,
                t.subject.agent_id
            )
        };
        events::emit(state, &t.subject, Kind::CertificateExpiring, detail).await;
    }
}
