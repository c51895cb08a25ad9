//! Jobs on the agent: what it declares (types it runs, credentials it
//! holds, how many at once), and the runner that takes `JobAssign`s,
//! runs their handlers and reports back.
//!
//! Jobs outlive sessions: a handler keeps running when the stream breaks,
//! and its updates wait (bounded) in an outbox that the next session
//! drains; the control plane accepts them while the agent's lease holds.

pub mod builtin;
pub mod credentials;
pub mod handler;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tether::proto::{
    HeldJob, JobAssign, JobFailed, JobLog, JobRejected, JobStarted, JobSucceeded, JobUpdate,
    job_update,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use self::credentials::Source;
use crate::{egress::Policy, shared::Shared};

/// Largest result a handler may return.
pub const MAX_RESULT: usize = 1024 * 1024;
/// Updates waiting for a session (log lines are dropped beyond; results
/// wait for room).
const OUTBOX: usize = 1024;
/// Unacknowledged final updates kept at most.
const MAX_FINALS: usize = 4096;
/// Log lines per update, and how long a partial batch may wait.
const LOG_BATCH: usize = 100;
const LOG_FLUSH: Duration = Duration::from_millis(200);
/// A job with no deadline still ends (a week).
const NO_DEADLINE: Duration = Duration::from_secs(7 * 86_400);

/// Why an attempt failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: String,
    pub retryable: bool,
}

/// What the agent runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobsConfig {
    /// Job type → executable.
    pub handlers: BTreeMap<String, PathBuf>,
    /// Credential name → where its value comes from.
    pub credentials: BTreeMap<String, Source>,
    /// Jobs at once.
    pub max_concurrent: u32,
}

/// A running job: its lease and how to stop it.
#[derive(Debug)]
struct Running {
    token: u64,
    cancel: CancellationToken,
}

/// A final update (succeeded, failed, rejected) waiting for its JobAck.
#[derive(Debug)]
struct Final {
    update: JobUpdate,
    /// When it was last handed to a session.
    sent: Instant,
}

/// Takes jobs, runs them, reports.
#[derive(Debug)]
pub struct Runner {
    config: JobsConfig,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
    tmp_dir: PathBuf,
    running: Mutex<HashMap<String, Running>>,
    /// Final updates the control plane has not acknowledged, by job id:
    /// sent again on the next session, so none is lost with a session.
    finals: Mutex<HashMap<String, Final>>,
    tx: mpsc::Sender<JobUpdate>,
    /// Drained by the current session (one at a time).
    pub outbox: tokio::sync::Mutex<mpsc::Receiver<JobUpdate>>,
    /// An update taken from the outbox that a session could not send.
    unsent: Mutex<Option<JobUpdate>>,
    tasks: TaskTracker,
}

fn update(job_id: &str, token: u64, kind: job_update::Kind) -> JobUpdate {
    JobUpdate {
        job_id: job_id.to_owned(),
        lease_token: token,
        kind: Some(kind),
    }
}

impl Runner {
    pub fn new(
        config: JobsConfig,
        policy: Arc<Policy>,
        shared: Arc<Shared>,
        state_dir: &std::path::Path,
    ) -> Self {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let tmp_dir = state_dir.join("job-credentials");
        credentials::clear_leftovers(&tmp_dir);
        Self {
            config,
            policy,
            shared,
            tmp_dir,
            running: Mutex::new(HashMap::new()),
            finals: Mutex::new(HashMap::new()),
            tx,
            outbox: tokio::sync::Mutex::new(rx),
            unsent: Mutex::new(None),
            tasks: TaskTracker::new(),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running
            .lock()
            .expect("job table lock poisoned: a task panicked while holding it")
    }

    /// Job types this agent runs: the built-ins and its handlers.
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = builtin::TYPES.iter().map(|t| (*t).to_owned()).collect();
        caps.extend(self.config.handlers.keys().cloned());
        caps.sort();
        caps.dedup();
        caps
    }

    /// Names of its credentials (never their values).
    pub fn credential_names(&self) -> Vec<String> {
        self.config.credentials.keys().cloned().collect()
    }

    pub fn max_concurrent(&self) -> u32 {
        self.config.max_concurrent
    }

    /// The update a previous session could not send.
    pub fn take_unsent(&self) -> Option<JobUpdate> {
        self.unsent.lock().ok().and_then(|mut u| u.take())
    }

    /// Keeps an update for the next session.
    pub fn keep_unsent(&self, u: Option<JobUpdate>) {
        if let Ok(mut slot) = self.unsent.lock() {
            *slot = u;
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.jobs().len()
    }

    fn finals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Final>> {
        self.finals
            .lock()
            .expect("final update table lock poisoned: a task panicked while holding it")
    }

    /// The jobs it holds, with their leases (for the heartbeat, which
    /// renews exactly these): running ones, and finished ones whose final
    /// update is not acknowledged yet.
    pub fn held(&self) -> Vec<HeldJob> {
        let mut held: Vec<HeldJob> = self
            .jobs()
            .iter()
            .map(|(id, r)| HeldJob {
                job_id: id.clone(),
                lease_token: r.token,
            })
            .collect();
        held.extend(self.finals().values().map(|f| HeldJob {
            job_id: f.update.job_id.clone(),
            lease_token: f.update.lease_token,
        }));
        held
    }

    /// Keeps a final update until the control plane acknowledges it.
    fn keep_final(&self, u: &JobUpdate) {
        let mut finals = self.finals();
        if finals.len() >= MAX_FINALS && !finals.contains_key(&u.job_id) {
            // Only a control plane that never acknowledges gets here.
            if let Some(oldest) = finals
                .iter()
                .min_by_key(|(_, f)| f.sent)
                .map(|(id, _)| id.clone())
            {
                warn!(job_id = %oldest, "forgetting an unacknowledged job result: {MAX_FINALS} are waiting");
                finals.remove(&oldest);
            }
        }
        finals.insert(
            u.job_id.clone(),
            Final {
                update: u.clone(),
                sent: Instant::now(),
            },
        );
    }

    /// The control plane recorded a job's final update.
    pub fn acked(&self, job_id: &str, token: u64) {
        let mut finals = self.finals();
        if finals
            .get(job_id)
            .is_some_and(|f| f.update.lease_token == token)
        {
            finals.remove(job_id);
        }
    }

    /// Final updates to send (again): every one at a session's start
    /// (`unacknowledged_for` zero), later those unacknowledged that long.
    pub fn finals_due(&self, unacknowledged_for: Duration) -> Vec<JobUpdate> {
        let now = Instant::now();
        self.finals()
            .values_mut()
            .filter(|f| now.duration_since(f.sent) >= unacknowledged_for)
            .map(|f| {
                f.sent = now;
                f.update.clone()
            })
            .collect()
    }

    /// Sends an update that must not be lost (waits for room).
    async fn report(&self, u: JobUpdate) {
        if self.tx.send(u).await.is_err() {
            warn!("the job outbox is closed; an update was lost");
        }
    }

    fn reject(self: &Arc<Self>, job: &JobAssign, reason: String) {
        warn!(job_id = %job.job_id, %reason, "job rejected");
        let u = update(
            &job.job_id,
            job.lease_token,
            job_update::Kind::Rejected(JobRejected { reason }),
        );
        self.keep_final(&u);
        let me = self.clone();
        self.tasks.spawn(async move { me.report(u).await });
    }

    /// Takes a job pushed by the control plane.
    pub fn assign(self: &Arc<Self>, job: JobAssign) {
        if self.shared.is_draining() {
            return self.reject(&job, "the agent is drained".into());
        }
        if let Some(p) = self.shared.problem() {
            return self.reject(&job, p.message);
        }
        let known = builtin::TYPES.contains(&job.job_type.as_str())
            || self.config.handlers.contains_key(&job.job_type);
        if !known {
            return self.reject(
                &job,
                format!("this agent has no handler for job type {:?}", job.job_type),
            );
        }
        let cancel = CancellationToken::new();
        {
            let mut jobs = self.jobs();
            // The same job again with a newer lease: the old attempt stops.
            if let Some(old) = jobs.remove(&job.job_id) {
                old.cancel.cancel();
            }
            if jobs.len() >= usize::try_from(self.config.max_concurrent).unwrap_or(usize::MAX) {
                drop(jobs);
                return self.reject(
                    &job,
                    format!(
                        "the agent already runs its limit of {} jobs",
                        self.config.max_concurrent
                    ),
                );
            }
            jobs.insert(
                job.job_id.clone(),
                Running {
                    token: job.lease_token,
                    cancel: cancel.clone(),
                },
            );
        }
        let span = info_span!("job", job_id = %job.job_id, job_type = %job.job_type, attempt = job.attempt);
        let me = self.clone();
        self.tasks
            .spawn(async move { me.execute(job, cancel).await }.instrument(span));
    }

    /// Stops a job (cancelled, or its lease is gone); nothing more is
    /// reported for it.
    pub fn cancel(&self, job_id: &str, token: u64, reason: &str) {
        // A final update for it is moot too.
        self.acked(job_id, token);
        let mut jobs = self.jobs();
        if jobs.get(job_id).is_some_and(|r| r.token == token)
            && let Some(r) = jobs.remove(job_id)
        {
            info!(%job_id, %reason, "stopping a job");
            r.cancel.cancel();
        }
    }

    async fn execute(self: Arc<Self>, job: JobAssign, cancel: CancellationToken) {
        let (id, token) = (job.job_id.clone(), job.lease_token);
        self.report(update(&id, token, job_update::Kind::Started(JobStarted {})))
            .await;
        info!("job started");
        let deadline = deadline_in(job.deadline_unix_ms);
        let logs = LogSink::new(self.tx.clone(), id.clone(), token, self.shared.clone());
        let result = match builtin::run(&job.job_type, &job.payload, &self.policy, deadline).await {
            Some(r) => r,
            None => {
                self.run_handler(&job, deadline, cancel.clone(), &logs)
                    .await
            }
        };
        logs.flush();
        // Cancelled: the control plane no longer wants to hear of it. The
        // job leaves the table before its final update is queued, so the
        // slot is free by the time the control plane reuses it.
        let still_mine = {
            let mut jobs = self.jobs();
            let mine = jobs.get(&id).is_some_and(|r| r.token == token);
            if mine {
                jobs.remove(&id);
            }
            mine
        };
        if !still_mine || cancel.is_cancelled() {
            info!("job stopped");
            return;
        }
        let kind = match result {
            Ok(out) => {
                info!(bytes = out.len(), "job succeeded");
                job_update::Kind::Succeeded(JobSucceeded { result: out })
            }
            Err(f) => {
                warn!(error = %f.error, retryable = f.retryable, "job failed");
                job_update::Kind::Failed(JobFailed {
                    error: self.shared.logs.redactor().redact(&f.error),
                    retryable: f.retryable,
                })
            }
        };
        let u = update(&id, token, kind);
        self.keep_final(&u);
        self.report(u).await;
    }

    async fn run_handler(
        &self,
        job: &JobAssign,
        deadline: Duration,
        cancel: CancellationToken,
        logs: &LogSink,
    ) -> Result<Vec<u8>, Failure> {
        let Some(program) = self.config.handlers.get(&job.job_type) else {
            return Err(Failure {
                error: format!("no handler for {:?}", job.job_type),
                retryable: false,
            });
        };
        let redactor = self.shared.logs.redactor();
        let handed = credentials::hand_over(
            &job.credential_names,
            &self.config.credentials,
            &self.tmp_dir,
            &job.job_id,
            |v| redactor.add_secret(v),
        )
        .map_err(|error| Failure {
            error,
            retryable: true,
        })?;
        let mut env: Vec<(String, String)> = vec![
            ("TETHER_JOB_ID".into(), job.job_id.clone()),
            ("TETHER_JOB_TYPE".into(), job.job_type.clone()),
            ("TETHER_JOB_ATTEMPT".into(), job.attempt.to_string()),
            ("TETHER_JOB_LEASE_TOKEN".into(), job.lease_token.to_string()),
            (
                "TETHER_JOB_DEADLINE_UNIX_MS".into(),
                job.deadline_unix_ms.to_string(),
            ),
        ];
        env.extend(handed.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let on_line = |line: String| logs.line(line);
        let out = handler::run(handler::Run {
            program,
            payload: &job.payload,
            env,
            deadline,
            cancel,
            on_line: &on_line,
        })
        .await;
        // The credential files go now, whatever happened.
        drop(handed);
        out
    }
}

fn deadline_in(unix_ms: i64) -> Duration {
    if unix_ms <= 0 {
        return NO_DEADLINE;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Duration::from_millis(u64::try_from(unix_ms.saturating_sub(now)).unwrap_or(0))
}

/// Batches a job's log lines (redacted) into updates; lines that find the
/// outbox full are dropped and counted, never waited for.
struct LogSink {
    tx: mpsc::Sender<JobUpdate>,
    job_id: String,
    token: u64,
    shared: Arc<Shared>,
    batch: Mutex<(Vec<String>, Option<tokio::time::Instant>, u64)>,
}

impl LogSink {
    fn new(tx: mpsc::Sender<JobUpdate>, job_id: String, token: u64, shared: Arc<Shared>) -> Self {
        Self {
            tx,
            job_id,
            token,
            shared,
            batch: Mutex::new((Vec::new(), None, 0)),
        }
    }

    fn line(&self, line: String) {
        let line = self.shared.logs.redactor().redact(&line);
        let full = {
            let Ok(mut b) = self.batch.lock() else {
                return;
            };
            b.1.get_or_insert_with(tokio::time::Instant::now);
            b.0.push(line);
            b.0.len() >= LOG_BATCH || b.1.is_some_and(|t| t.elapsed() >= LOG_FLUSH)
        };
        if full {
            self.flush();
        }
    }

    fn flush(&self) {
        let Ok(mut b) = self.batch.lock() else {
            return;
        };
        if b.0.is_empty() {
            return;
        }
        let mut lines = std::mem::take(&mut b.0);
        b.1 = None;
        if b.2 > 0 {
            lines.insert(
                0,
                format!(
                    "[{} log lines dropped: the agent could not send them fast enough]",
                    b.2
                ),
            );
        }
        let n = lines.len() as u64;
        let u = update(
            &self.job_id,
            self.token,
            job_update::Kind::Log(JobLog { lines }),
        );
        match self.tx.try_send(u) {
            Ok(()) => b.2 = 0,
            Err(_) => b.2 += n,
        }
    }
}
