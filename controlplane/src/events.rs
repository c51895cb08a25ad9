//! Agent events: state changes (connected, stale, offline, draining, ...)
//! and alerts (stale, offline, clock skew, certificate expiring, disk or
//! inodes low). Every event is stored (listable, watchable by id); alerts
//! also go to the webhook, if one is configured.

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    state::{State, now_ms},
    store::EventRecord,
};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Connected,
    Stale,
    Recovered,
    Offline,
    Draining,
    Undrained,
    Revoked,
    ClockSkew,
    CertificateExpiring,
    /// A workspace problem the agent reported, by its code.
    Problem(&'static str),
    ProblemCleared,
}

impl Kind {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Stale => "stale",
            Kind::Recovered => "recovered",
            Kind::Offline => "offline",
            Kind::Draining => "draining",
            Kind::Undrained => "undrained",
            Kind::Revoked => "revoked",
            Kind::ClockSkew => "clock_skew",
            Kind::CertificateExpiring => "certificate_expiring",
            Kind::Problem(code) => code,
            Kind::ProblemCleared => "problem_cleared",
        }
    }

    /// Whether operators are alerted (webhook).
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            Kind::Stale
                | Kind::Offline
                | Kind::ClockSkew
                | Kind::CertificateExpiring
                | Kind::Problem(_)
        )
    }

    /// A problem code an agent reported, as a kind (unknown codes from newer
    /// agents keep a generic name).
    pub fn problem(code: &str) -> Kind {
        Kind::Problem(match code {
            "disk_low" => "disk_low",
            "inodes_low" => "inodes_low",
            "workspace_not_writable" => "workspace_not_writable",
            _ => "agent_problem",
        })
    }
}

/// Whom an event is about.
#[derive(Clone, Debug)]
pub struct Subject {
    pub org_id: String,
    pub agent_id: String,
    pub pool: String,
}

/// Alerts waiting for the webhook; more are dropped (and counted).
const WEBHOOK_QUEUE: usize = 1000;

/// The event hub: the newest id for watchers, the webhook queue.
#[derive(Debug)]
pub struct Events {
    latest: watch::Sender<u64>,
    webhook: Option<mpsc::Sender<EventRecord>>,
}

impl Events {
    /// A hub; the receiver (if a webhook is configured) goes to
    /// [`crate::webhook::run`].
    pub fn new(webhook: bool) -> (Self, Option<mpsc::Receiver<EventRecord>>) {
        let (tx, rx) = if webhook {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let events = Self {
            latest: watch::channel(0).0,
            webhook: tx,
        };
        (events, rx)
    }

    /// Wakes whenever an event is stored on this replica.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// Stores an event, wakes watchers and queues alerts for the webhook. A
/// store failure is logged: events must never stop the thing they report.
pub async fn emit(state: &State, who: &Subject, kind: Kind, detail: String) {
    let mut event = EventRecord {
        id: 0,
        org_id: who.org_id.clone(),
        agent_id: who.agent_id.clone(),
        pool: who.pool.clone(),
        time_ms: now_ms(),
        kind: kind.as_str().into(),
        detail,
        alert: kind.is_alert(),
    };
    if event.alert {
        warn!(agent_id = %event.agent_id, pool = %event.pool, event = %event.kind, "{}", event.detail);
    } else {
        info!(agent_id = %event.agent_id, pool = %event.pool, event = %event.kind, "{}", event.detail);
    }
    state.metrics.event(&event.kind);
    match state.store.insert_event(&event).await {
        Ok(id) => {
            event.id = id;
            state.events.latest.send_replace(id);
        }
        Err(e) => warn!(error = %e, event = %event.kind, "could not store an agent event"),
    }
    if let (true, Some(tx)) = (event.alert, &state.events.webhook)
        && tx.try_send(event).is_err()
    {
        warn!(
            "the alert webhook queue is full ({WEBHOOK_QUEUE} alerts waiting); dropping this alert \
             (it stays in `tetherctl events`); check that the receiver answers"
        );
        state.metrics.webhook_delivery("dropped");
    }
}
