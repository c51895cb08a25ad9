//! Live sessions on this replica: agent id → the session that carries its
//! channels and commands.
//!
//! The newest session of an agent wins (invariant 9): registering a session
//! returns the one it replaced, which the caller closes; removing a session
//! removes it only if it is still the registered one, so that a late cleanup
//! of an old session cannot remove its successor.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use tether::proto::HealthSample;
use tether_tunnel::{ServerWire, driver::Connection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the agent said about itself in its Hello.
#[derive(Clone, Debug, Default)]
pub struct HelloInfo {
    pub version: String,
    pub hostname: String,
    pub config_hash: String,
    /// Job types the agent runs.
    pub capabilities: Vec<String>,
    /// Credentials it holds, by name.
    pub credential_names: Vec<String>,
    /// Jobs it runs at once.
    pub max_jobs: u32,
}

/// The latest heartbeat of a session.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// When it arrived (tokio clock, for staleness).
    pub at: Instant,
    /// When it arrived, Unix milliseconds.
    pub at_ms: i64,
    /// Round trip the agent measured, microseconds.
    pub rtt_us: u64,
    /// Agent clock minus server clock, milliseconds.
    pub clock_skew_ms: i64,
    /// The agent's health sample (shared: scans and routing read it often).
    pub sample: Option<Arc<HealthSample>>,
}

/// One attached agent session.
#[derive(Debug)]
pub struct LiveSession {
    pub agent_id: String,
    pub session_id: String,
    pub org_id: String,
    pub pool: String,
    pub connection: Connection<ServerWire>,
    pub peer: Option<SocketAddr>,
    pub connected_ms: i64,
    pub hello: HelloInfo,
    /// Ends the session's task (revocation, replacement, shutdown).
    pub cancel: CancellationToken,
    /// Commands waiting for the agent's answers.
    pub commands: crate::commands::Commands,
    draining: AtomicBool,
    /// When a health sample was last kept in the history (Unix ms).
    history_ms: AtomicI64,
    /// Jobs this agent holds a lease on: job id → lease token.
    held_jobs: Mutex<HashMap<String, u64>>,
    /// Taken around a claim for this agent and around a heartbeat's lease
    /// renewal, so a renewal's view of the store never erases a job
    /// claimed while it ran.
    pub job_sync: tokio::sync::Mutex<()>,
    heartbeat: Mutex<Heartbeat>,
}

impl LiveSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        agent_id: String,
        session_id: String,
        org_id: String,
        pool: String,
        connection: Connection<ServerWire>,
        peer: Option<SocketAddr>,
        connected_ms: i64,
        hello: HelloInfo,
        draining: bool,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            agent_id,
            session_id,
            org_id,
            pool,
            connection,
            peer,
            connected_ms,
            hello,
            cancel,
            commands: crate::commands::Commands::default(),
            draining: AtomicBool::new(draining),
            history_ms: AtomicI64::new(0),
            held_jobs: Mutex::new(HashMap::new()),
            job_sync: tokio::sync::Mutex::new(()),
            heartbeat: Mutex::new(Heartbeat {
                at: Instant::now(),
                at_ms: connected_ms,
                rtt_us: 0,
                clock_skew_ms: 0,
                sample: None,
            }),
        }
    }

    /// True when a sample taken at `now_ms` is due for the history (at
    /// most one per `every`); marks it taken.
    pub fn history_due(&self, now_ms: i64, every: Duration) -> bool {
        let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let last = self.history_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= every
            && self
                .history_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The control plane's view: set by operators (drain, undrain) and at
    /// attach from the stored mark, not by the agent's heartbeats, so that
    /// a heartbeat in flight cannot undo a drain.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// The latest heartbeat (or the attach time, before the first one).
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat
            .lock()
            .expect("heartbeat lock poisoned: a task panicked while holding it")
            .clone()
    }

    pub fn record_heartbeat(&self, hb: Heartbeat) {
        *self
            .heartbeat
            .lock()
            .expect("heartbeat lock poisoned: a task panicked while holding it") = hb;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held_jobs
            .lock()
            .expect("job table lock poisoned: a task panicked while holding it")
    }

    /// Job slots free on the agent.
    pub fn free_job_slots(&self) -> usize {
        usize::try_from(self.hello.max_jobs)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.held().len())
    }

    /// Jobs it holds now.
    pub fn held_job_count(&self) -> usize {
        self.held().len()
    }

    /// A job was pushed to the agent.
    pub fn hold_job(&self, job_id: &str, token: u64) {
        self.held().insert(job_id.to_owned(), token);
    }

    /// A job of the agent ended (or its lease was lost); true if it held
    /// that lease.
    pub fn release_job(&self, job_id: &str, token: u64) -> bool {
        let mut held = self.held();
        if held.get(job_id) == Some(&token) {
            held.remove(job_id);
            return true;
        }
        false
    }

    /// Replaces what the agent holds with the store's view (taken under
    /// `job_sync`, after a lease renewal).
    pub fn set_held_jobs(&self, assigned: Vec<(String, u64)>) {
        *self.held() = assigned.into_iter().collect();
    }

    /// Whether the agent can be given jobs: it runs some, is not drained,
    /// heart-beats (a stale agent would let its leases lapse), reports no
    /// workspace problem, and its session is up.
    pub fn takes_jobs(&self, interval: Duration) -> bool {
        !self.hello.capabilities.is_empty()
            && self.hello.max_jobs > 0
            && !self.is_draining()
            && !self.is_stale(interval)
            && !self.connection.is_closed()
            && self
                .heartbeat()
                .sample
                .is_none_or(|h| h.problem_code.is_empty())
    }

    /// No heartbeat for three intervals.
    pub fn is_stale(&self, interval: Duration) -> bool {
        self.heartbeat().at.elapsed() > interval * 3
    }
}

/// The live sessions of this replica.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: RwLock<HashMap<String, Arc<LiveSession>>>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.sessions
            .read()
            .expect("registry lock poisoned: a task panicked while holding it")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.sessions
            .write()
            .expect("registry lock poisoned: a task panicked while holding it")
    }

    /// Registers a session; returns the one it replaces (to be closed).
    pub fn insert(&self, session: Arc<LiveSession>) -> Option<Arc<LiveSession>> {
        self.write().insert(session.agent_id.clone(), session)
    }

    /// Removes the agent's session if it is still `session_id`.
    pub fn remove(&self, agent_id: &str, session_id: &str) -> bool {
        let mut map = self.write();
        if map
            .get(agent_id)
            .is_some_and(|s| s.session_id == session_id)
        {
            map.remove(agent_id);
            return true;
        }
        false
    }

    /// The agent's live session.
    pub fn get(&self, agent_id: &str) -> Option<Arc<LiveSession>> {
        self.read().get(agent_id).cloned()
    }

    /// The live sessions that `keep` accepts, chosen under the lock so
    /// that scans of many sessions clone only what they use.
    pub fn matching(&self, keep: impl Fn(&LiveSession) -> bool) -> Vec<Arc<LiveSession>> {
        self.read().values().filter(|s| keep(s)).cloned().collect()
    }

    /// Whether any live session passes `test` (stops at the first).
    pub fn any(&self, test: impl Fn(&LiveSession) -> bool) -> bool {
        self.read().values().any(|s| test(s))
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.read().values().cloned().collect()
    }

    /// Sessions that may take a new channel for `pool`, best first: not
    /// draining and not closed; fresh heartbeats before stale ones, agents
    /// without a workspace problem before those with one (they refuse, and
    /// the router fails over), then the least loaded (fewest open channels).
    pub fn candidates(
        &self,
        org_id: &str,
        pool: &str,
        interval: Duration,
    ) -> Vec<Arc<LiveSession>> {
        let mut list: Vec<((bool, bool, usize), Arc<LiveSession>)> = self
            .read()
            .values()
            .filter(|s| s.org_id == org_id && s.pool == pool && !s.is_draining())
            .filter(|s| !s.connection.is_closed())
            .map(|s| {
                let troubled = s
                    .heartbeat()
                    .sample
                    .is_some_and(|h| !h.problem_code.is_empty());
                (
                    (s.is_stale(interval), troubled, s.connection.channel_count()),
                    s.clone(),
                )
            })
            .collect();
        list.sort_by_key(|(key, _)| *key);
        list.into_iter().map(|(_, s)| s).collect()
    }
}
