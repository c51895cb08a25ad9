//! The store's tests, each run on both backends: a temporary SQLite file
//! and a fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards;
//! `TETHER_TEST_POSTGRES_URL` points elsewhere). PostgreSQL must be there:
//! a missing server fails the tests, it does not skip them.

use std::collections::BTreeMap;

use sqlx::{Connection, Executor, PgConnection};

use super::*;

/// The server the tests create their databases on.
fn admin_url() -> String {
    std::env::var("TETHER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of one test, dropped with it.
pub(crate) struct PgDatabase {
    pub(crate) url: String,
    name: String,
}

impl PgDatabase {
    pub(crate) async fn create() -> Self {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is needed at {admin} (set TETHER_TEST_POSTGRES_URL, or start it; \
                 scripts/check-services.sh says how): {e}"
            )
        });
        let name = format!(
            "tether_t_{}_{}",
            std::process::id(),
            crate::identity::secrets::random_hex(6)
        );
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop runs inside the test's runtime: drop the database from a
        // thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// What keeps a test store's data alive.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Pg(PgDatabase),
}

async fn sqlite() -> (Guard, SqlStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqlStore::open_sqlite(&dir.path().join("t.db"))
        .await
        .unwrap();
    (Guard::Dir(dir), s)
}

async fn postgres() -> (Guard, SqlStore) {
    let db = PgDatabase::create().await;
    let s = SqlStore::open_postgres(&db.url).await.unwrap();
    (Guard::Pg(db), s)
}

/// One test body, run on each backend.
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let (_g, s) = super::sqlite().await;
                super::$body(&s).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (_g, s) = super::postgres().await;
                super::$body(&s).await;
            }
        }
    };
}

fn tok(id: &str, max_uses: u32) -> TokenRecord {
    TokenRecord {
        token_id: id.into(),
        org_id: "default".into(),
        pool: "p".into(),
        secret_hash: vec![1; 32],
        created_ms: 1,
        expires_ms: 1_000,
        max_uses,
        uses: 0,
        last_used_ms: 0,
        revoked_ms: 0,
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        description: String::new(),
    }
}

fn agent_rec(id: &str) -> AgentRecord {
    AgentRecord {
        agent_id: id.into(),
        org_id: "default".into(),
        pool: "p".into(),
        token_id: "t1".into(),
        ..AgentRecord::default()
    }
}

async fn a_single_use_token_enrolls_exactly_once_check(s: &SqlStore) {
    s.insert_token(&tok("t1", 1)).await.unwrap();
    assert!(s.enroll("t1", 10, &agent_rec("a1")).await.unwrap());
    assert!(!s.enroll("t1", 11, &agent_rec("a2")).await.unwrap());
    assert!(
        s.get_agent("a2").await.unwrap().is_none(),
        "a refused enrollment leaves no agent"
    );
    let t = s.get_token("t1").await.unwrap().unwrap();
    assert_eq!((t.uses, t.last_used_ms), (1, 10));
    assert_eq!(t.labels["zone"], "a");
}
on_both!(
    a_single_use_token_enrolls_exactly_once,
    a_single_use_token_enrolls_exactly_once_check
);

async fn expired_or_revoked_tokens_do_not_enroll_check(s: &SqlStore) {
    s.insert_token(&tok("t1", 5)).await.unwrap();
    assert!(
        !s.enroll("t1", 1_000, &agent_rec("a1")).await.unwrap(),
        "expired"
    );
    assert!(
        s.revoke_token("other-org", "t1", 5)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.revoke_token("default", "t1", 5).await.unwrap().is_some());
    assert!(
        !s.enroll("t1", 6, &agent_rec("a1")).await.unwrap(),
        "revoked"
    );
}
on_both!(
    expired_or_revoked_tokens_do_not_enroll,
    expired_or_revoked_tokens_do_not_enroll_check
);

async fn connection_names_are_unique_per_org_check(s: &SqlStore) {
    let c = ConnectionRecord {
        org_id: "default".into(),
        name: "pg".into(),
        pool: "p".into(),
        target_host: "127.0.0.1".into(),
        target_port: 5432,
        gateway_listen: "127.0.0.1:0".into(),
        created_ms: 1,
    };
    s.insert_connection(&c).await.unwrap();
    assert!(matches!(
        s.insert_connection(&c).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        s.list_connections(Some("default")).await.unwrap(),
        vec![c.clone()]
    );
    assert!(s.list_connections(Some("other")).await.unwrap().is_empty());
    assert!(s.delete_connection("default", "pg").await.unwrap());
    assert!(!s.delete_connection("default", "pg").await.unwrap());
}
on_both!(
    connection_names_are_unique_per_org,
    connection_names_are_unique_per_org_check
);

async fn hello_and_heartbeat_update_the_agent_check(s: &SqlStore) {
    s.insert_token(&tok("t1", 2)).await.unwrap();
    s.enroll("t1", 10, &agent_rec("a1")).await.unwrap();
    let hello = HelloRecord {
        hostname: "h".into(),
        version: "0.1.0".into(),
        capabilities: vec!["probe".into()],
        ..HelloRecord::default()
    };
    s.record_hello("a1", &hello, 20).await.unwrap();
    s.enroll("t1", 11, &agent_rec("a2")).await.unwrap();
    let beat = |agent: &str, at_ms, rtt_us, clock_skew_ms| HeartbeatRecord {
        agent_id: agent.into(),
        at_ms,
        rtt_us,
        clock_skew_ms,
        history_sample: None,
    };
    // a1's older record, later in the same batch, changes nothing.
    s.record_heartbeats(
        &[
            beat("a1", 30, 1500, -4),
            beat("a2", 31, 900, 2),
            beat("a1", 29, 7, 7),
        ],
        3,
    )
    .await
    .unwrap();
    let a2 = s.get_agent("a2").await.unwrap().unwrap();
    assert_eq!(
        (a2.last_heartbeat_ms, a2.rtt_us, a2.clock_skew_ms),
        (31, 900, 2)
    );
    let a = s.get_agent("a1").await.unwrap().unwrap();
    assert_eq!(a.hostname, "h");
    assert_eq!(a.capabilities, ["probe"]);
    assert_eq!(
        (
            a.last_connected_ms,
            a.last_heartbeat_ms,
            a.rtt_us,
            a.clock_skew_ms
        ),
        (20, 30, 1500, -4)
    );
}
on_both!(
    hello_and_heartbeat_update_the_agent,
    hello_and_heartbeat_update_the_agent_check
);

async fn health_history_keeps_only_the_newest_check(s: &SqlStore) {
    let beat = |agent: &str, at_ms, sample: Option<Vec<u8>>| HeartbeatRecord {
        agent_id: agent.into(),
        at_ms,
        rtt_us: 0,
        clock_skew_ms: 0,
        history_sample: sample,
    };
    // One batch, and one record each, both keep only the newest three.
    let batch: Vec<HeartbeatRecord> = (1..=6)
        .map(|t| beat("a1", t, Some(vec![u8::try_from(t).unwrap()])))
        .collect();
    s.record_heartbeats(&batch, 3).await.unwrap();
    for t in 7..=10 {
        let sample = (t != 7).then(|| vec![u8::try_from(t).unwrap()]);
        s.record_heartbeats(&[beat("a1", t, sample)], 3)
            .await
            .unwrap();
    }
    s.record_heartbeats(&[beat("a2", 5, Some(vec![99]))], 3)
        .await
        .unwrap();
    let kept = s.list_health_samples("a1", 100).await.unwrap();
    assert_eq!(kept, vec![(8, vec![8]), (9, vec![9]), (10, vec![10])]);
    assert_eq!(s.list_health_samples("a2", 100).await.unwrap().len(), 1);
}
on_both!(
    health_history_keeps_only_the_newest,
    health_history_keeps_only_the_newest_check
);

async fn events_page_by_id_and_org_and_prune_by_age_check(s: &SqlStore) {
    let ev = |org: &str, agent: &str, t: i64| EventRecord {
        org_id: org.into(),
        agent_id: agent.into(),
        pool: "p".into(),
        time_ms: t,
        kind: "stale".into(),
        detail: String::new(),
        alert: true,
        id: 0,
    };
    let a = s.insert_event(&ev("o1", "a1", 10)).await.unwrap();
    let b = s.insert_event(&ev("o2", "a9", 20)).await.unwrap();
    let c = s.insert_event(&ev("o1", "a2", 30)).await.unwrap();
    assert!(a < b && b < c);
    let all = s.list_events("o1", 0, None, 10, false).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [a, c]);
    assert!(all[0].alert);
    let after = s.list_events("o1", a, None, 10, false).await.unwrap();
    assert_eq!(after.len(), 1);
    let one = s.list_events("o1", 0, Some("a2"), 10, false).await.unwrap();
    let newest = s.list_events("o1", 0, None, 1, true).await.unwrap();
    assert_eq!(newest.iter().map(|e| e.id).collect::<Vec<_>>(), [c]);
    let oldest = s.list_events("o1", 0, None, 1, false).await.unwrap();
    assert_eq!(oldest.iter().map(|e| e.id).collect::<Vec<_>>(), [a]);
    assert_eq!(one[0].agent_id, "a2");
    assert_eq!(s.prune_events(25).await.unwrap(), 2);
    assert_eq!(
        s.list_events("o1", 0, None, 10, false).await.unwrap().len(),
        1
    );
}
on_both!(
    events_page_by_id_and_org_and_prune_by_age,
    events_page_by_id_and_org_and_prune_by_age_check
);

async fn pool_pins_upsert_check(s: &SqlStore) {
    assert_eq!(s.get_pool("o", "p").await.unwrap(), None);
    let mut p = PoolRecord {
        org_id: "o".into(),
        name: "p".into(),
        pinned_version: "1.0".into(),
        pinned_config_hash: String::new(),
        updated_ms: 1,
    };
    s.upsert_pool(&p).await.unwrap();
    p.pinned_config_hash = "abc".into();
    s.upsert_pool(&p).await.unwrap();
    assert_eq!(s.get_pool("o", "p").await.unwrap(), Some(p.clone()));
    assert_eq!(s.list_pools("o").await.unwrap(), vec![p]);
}
on_both!(pool_pins_upsert, pool_pins_upsert_check);

use super::jobs::{Claimant, JobRecord, JobStore, Outcome, Submitted, state};

fn job_rec(id: &str, job_type: &str, creds: &[&str], priority: i32) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        org_id: "o".into(),
        pool: "p".into(),
        job_type: job_type.into(),
        payload: b"in".to_vec(),
        credential_names: creds.iter().map(|c| (*c).to_owned()).collect(),
        priority,
        state: state::PENDING.into(),
        run_at_ms: 0,
        attempt_timeout_ms: 1000,
        max_attempts: 2,
        created_ms: 10,
        ..JobRecord::default()
    }
}

fn claimant(session: &str, caps: &[&str], creds: &[&str]) -> Claimant {
    Claimant {
        org_id: "o".into(),
        pool: "p".into(),
        agent_id: format!("agent-{session}"),
        session_id: session.into(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        credential_names: creds.iter().map(|c| (*c).to_owned()).collect(),
        lease_ms: 100,
    }
}

/// The audit entry a submission of `job_id` writes.
fn submitted_entry(job_id: &str) -> AuditRecord {
    AuditRecord {
        org_id: "o".into(),
        time_ms: 10,
        key_id: "key-1".into(),
        role: "operator".into(),
        action: "SubmitJob".into(),
        target: format!("job {job_id} pool p"),
        peer: "127.0.0.1:5555".into(),
        result: "ok".into(),
        detail: String::new(),
    }
}

async fn submit(s: &SqlStore, j: JobRecord) -> JobRecord {
    match s.submit_job(&j, &submitted_entry(&j.job_id)).await.unwrap() {
        Submitted::New(j) => j,
        Submitted::Existing(_) => panic!("{} exists", j.job_id),
    }
}

async fn claims_match_capabilities_credentials_and_priority_check(s: &SqlStore) {
    submit(s, job_rec("j-low", "sync", &[], 0)).await;
    submit(s, job_rec("j-high", "sync", &[], 5)).await;
    submit(s, job_rec("j-key", "git", &["ssh_key"], 9)).await;
    // Only "echo": nothing to take.
    assert!(
        s.claim_job(&claimant("s1", &["echo"], &[]), 100)
            .await
            .unwrap()
            .is_none()
    );
    // "git" without the credential: not that one; the highest "sync" instead.
    let c = claimant("s1", &["git", "sync"], &["other"]);
    let got = s.claim_job(&c, 100).await.unwrap().unwrap();
    assert_eq!(
        (got.job_id.as_str(), got.state.as_str()),
        ("j-high", state::ASSIGNED)
    );
    assert_eq!(
        (got.lease_token, got.attempts, got.lease_expires_ms),
        (1, 1, 200)
    );
    assert_eq!(got.attempt_deadline_ms, 1100);
    let c = claimant("s2", &["git"], &["ssh_key", "more"]);
    assert_eq!(s.claim_job(&c, 100).await.unwrap().unwrap().job_id, "j-key");
    // Idempotency: the same key returns the first job.
    let mut a = job_rec("j-a", "sync", &[], 0);
    a.idempotency_key = "k1".into();
    submit(s, a.clone()).await;
    a.job_id = "j-b".into();
    match s.submit_job(&a, &submitted_entry("j-b")).await.unwrap() {
        Submitted::Existing(j) => assert_eq!(j.job_id, "j-a"),
        Submitted::New(_) => panic!("a duplicate idempotency key made a second job"),
    }
    // A new job's audit entry is stored with it; the duplicate wrote none
    // (its caller audits the job it got back).
    let audit = s.list_audit("o", i64::MAX, 100).await.unwrap();
    assert!(audit.contains(&submitted_entry("j-a")), "{audit:?}");
    assert!(!audit.iter().any(|e| e.target.contains("j-b")), "{audit:?}");
    // Not due yet: a retry waits for run_at.
    let mut later = job_rec("j-later", "later", &[], 0);
    later.run_at_ms = 500;
    submit(s, later).await;
    let c = claimant("s3", &["later"], &[]);
    assert!(s.claim_job(&c, 100).await.unwrap().is_none());
    assert!(s.claim_job(&c, 500).await.unwrap().is_some());
}
on_both!(
    claims_match_capabilities_credentials_and_priority,
    claims_match_capabilities_credentials_and_priority_check
);

async fn a_stale_token_changes_nothing_check(s: &SqlStore) {
    submit(s, job_rec("j1", "sync", &[], 0)).await;
    let first = s
        .claim_job(&claimant("s1", &["sync"], &[]), 100)
        .await
        .unwrap()
        .unwrap();
    // The lease lapses: back to pending, then another session claims it.
    let swept = s.sweep_jobs(300).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].lost_token, swept[0].lost_session.as_str()),
        (1, "s1")
    );
    assert_eq!(swept[0].job.state, state::PENDING);
    assert!(
        swept[0].job.error.contains("lease expired"),
        "{}",
        swept[0].job.error
    );
    let second = s
        .claim_job(&claimant("s2", &["sync"], &[]), 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.lease_token, 2);
    // The first holder's late result is refused, and changes nothing.
    let late = s
        .finish_job(
            "j1",
            "agent-s1",
            first.lease_token,
            Outcome::Succeeded(b"late".to_vec()),
            310,
        )
        .await
        .unwrap();
    assert!(late.is_none());
    assert!(
        !s.job_started("j1", "agent-s1", first.lease_token)
            .await
            .unwrap()
    );
    assert!(
        !s.append_job_logs("j1", "agent-s1", first.lease_token, &["x".into()], 310, 10)
            .await
            .unwrap()
    );
    // The right token from the wrong agent is refused too.
    assert!(!s.job_started("j1", "agent-s1", 2).await.unwrap());
    assert!(s.job_started("j1", "agent-s2", 2).await.unwrap());
    assert!(
        s.append_job_logs("j1", "agent-s2", 2, &["a".into(), "b".into()], 320, 10)
            .await
            .unwrap()
    );
    let done = s
        .finish_job("j1", "agent-s2", 2, Outcome::Succeeded(b"ok".to_vec()), 330)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.result.as_slice()),
        (state::SUCCEEDED, &b"ok"[..])
    );
    assert!(
        s.finish_job("j1", "agent-s2", 2, Outcome::Succeeded(vec![]), 340)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.job_logs("j1", 100).await.unwrap(), ["a", "b"]);
    let attempts = s.job_attempts("j1").await.unwrap();
    let outcomes: Vec<(u64, &str)> = attempts
        .iter()
        .map(|a| (a.lease_token, a.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [(1, "lease_expired"), (2, "succeeded")]);
    // No overlap: the first lease ended before the second began.
    assert!(attempts[0].ended_ms <= attempts[1].started_ms);
}
on_both!(
    a_stale_token_changes_nothing,
    a_stale_token_changes_nothing_check
);

async fn failures_retry_until_attempts_run_out_check(s: &SqlStore) {
    submit(s, job_rec("j1", "sync", &[], 0)).await;
    let c = claimant("s1", &["sync"], &[]);
    let a = s.claim_job(&c, 100).await.unwrap().unwrap();
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry_at_ms: Some(150),
    };
    let j = s
        .finish_job("j1", "agent-s1", a.lease_token, failed.clone(), 110)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.state.as_str(), j.run_at_ms), (state::PENDING, 150));
    let b = s.claim_job(&c, 150).await.unwrap().unwrap();
    let j = s
        .finish_job("j1", "agent-s1", b.lease_token, failed, 160)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (j.state.as_str(), j.attempts, j.error.as_str()),
        (state::FAILED, 2, "boom")
    );
    assert_eq!(j.finished_ms, 160);
    // Not retryable: failed at once.
    submit(s, job_rec("j2", "sync", &[], 0)).await;
    let t = s.claim_job(&c, 200).await.unwrap().unwrap();
    let no_retry = Outcome::Failed {
        error: "bad input".into(),
        retry_at_ms: None,
    };
    let j = s
        .finish_job("j2", "agent-s1", t.lease_token, no_retry, 210)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.state, state::FAILED);
    // Past its deadline: swept, and on the last attempt failed.
    submit(s, job_rec("j3", "sync", &[], 0)).await;
    let mut long = c.clone();
    long.lease_ms = 1_000_000;
    s.claim_job(&long, 300).await.unwrap().unwrap();
    let swept = s.sweep_jobs(1_400).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert!(
        swept[0].job.error.contains("deadline"),
        "{}",
        swept[0].job.error
    );
    assert_eq!(s.job_attempts("j3").await.unwrap()[0].outcome, "deadline");
}
on_both!(
    failures_retry_until_attempts_run_out,
    failures_retry_until_attempts_run_out_check
);

async fn a_batch_claim_takes_exactly_its_limit_in_queue_order_check(s: &SqlStore) {
    for (i, id) in ["j1", "j2", "j3", "j4", "j5", "j6"].iter().enumerate() {
        let mut j = job_rec(id, "sync", &[], i32::from(*id == "j5"));
        j.created_ms = i64::try_from(i).unwrap();
        submit(s, j).await;
    }
    let c = claimant("s1", &["sync"], &[]);
    let got: Vec<String> = s
        .claim_jobs(&c, 100, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(got, ["j5", "j1", "j2"], "priority first, then the oldest");
    let pending = s
        .list_jobs("o", Some("p"), Some(state::PENDING), 100)
        .await
        .unwrap()
        .len();
    assert_eq!(pending, 3, "a claim of 3 must leave the other 3 pending");
    let rest = s.claim_jobs(&c, 100, 10).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert!(s.claim_jobs(&c, 100, 10).await.unwrap().is_empty());
}
on_both!(
    a_batch_claim_takes_exactly_its_limit_in_queue_order,
    a_batch_claim_takes_exactly_its_limit_in_queue_order_check
);

async fn only_the_leases_an_agent_holds_are_renewed_check(s: &SqlStore) {
    for id in ["j1", "j2", "j3"] {
        submit(s, job_rec(id, "sync", &[], 0)).await;
    }
    let c = claimant("s1", &["sync"], &[]);
    for _ in 0..3 {
        s.claim_job(&c, 100).await.unwrap().unwrap();
    }
    // The agent holds j1 and j2; j3's assignment never reached it, and
    // it names j2 with a token it never had.
    let held = [("j1".to_owned(), 1), ("j2".to_owned(), 7)];
    let mut assigned = s.renew_leases("agent-s1", &held, 5_000).await.unwrap();
    assigned.sort();
    assert_eq!(
        assigned,
        [("j1".into(), 1), ("j2".into(), 1), ("j3".into(), 1)],
        "every assignment is reported, renewed or not"
    );
    // Another agent cannot renew them.
    s.renew_leases("agent-s2", &[("j2".to_owned(), 1)], 9_000)
        .await
        .unwrap();
    // Only j1 was renewed: the others lapse and go back to the queue.
    let mut swept: Vec<String> = s
        .sweep_jobs(300)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.job.job_id)
        .collect();
    swept.sort();
    assert_eq!(swept, ["j2", "j3"]);
    assert_eq!(
        s.get_job("o", "j1")
            .await
            .unwrap()
            .unwrap()
            .lease_expires_ms,
        5_000
    );
}
on_both!(
    only_the_leases_an_agent_holds_are_renewed,
    only_the_leases_an_agent_holds_are_renewed_check
);

async fn cancel_and_unschedulable_check(s: &SqlStore) {
    submit(s, job_rec("j1", "sync", &[], 0)).await;
    let c = claimant("s1", &["sync"], &[]);
    s.claim_job(&c, 100).await.unwrap().unwrap();
    let held = [("j1".to_owned(), 1)];
    assert_eq!(
        s.renew_leases("agent-s1", &held, 5_000).await.unwrap(),
        held
    );
    let j = s
        .cancel_job("o", "j1", "not needed", 120)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (j.state.as_str(), j.lease_session.as_str()),
        (state::CANCELLED, "s1")
    );
    assert!(
        s.renew_leases("agent-s1", &held, 6_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.cancel_job("o", "j1", "again", 130)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.cancel_job("other-org", "j1", "x", 130)
            .await
            .unwrap()
            .is_none()
    );

    submit(s, job_rec("j2", "nobody", &["k"], 0)).await;
    let shapes = s.waiting_job_shapes().await.unwrap();
    let shape = shapes.iter().find(|sh| sh.2 == "nobody").unwrap().clone();
    assert_eq!(shape.3, ["k"]);
    assert_eq!(
        s.set_schedulable(&shape, Some("no agent declares it"), 1)
            .await
            .unwrap(),
        1
    );
    let j = s.get_job("o", "j2").await.unwrap().unwrap();
    assert_eq!(
        (j.state.as_str(), j.error.as_str()),
        (state::UNSCHEDULABLE, "no agent declares it")
    );
    assert!(
        s.claim_job(&claimant("s2", &["nobody"], &["k"]), 200)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.set_schedulable(&shape, None, 300).await.unwrap(), 1);
    assert!(
        s.claim_job(&claimant("s2", &["nobody"], &["k"]), 300)
            .await
            .unwrap()
            .is_some()
    );
    let counts = s.job_counts().await.unwrap();
    assert!(
        counts.contains(&("o".into(), "p".into(), state::ASSIGNED.into(), 1)),
        "{counts:?}"
    );
    // Retention: finished jobs go, with their attempts.
    assert_eq!(s.prune_jobs(10_000).await.unwrap(), 1);
    assert!(s.get_job("o", "j1").await.unwrap().is_none());
    assert!(s.job_attempts("j1").await.unwrap().is_empty());
}
on_both!(cancel_and_unschedulable, cancel_and_unschedulable_check);

/// Eight claimers race for 400 jobs: each job is claimed exactly once.
async fn concurrent_claims_never_hand_a_job_out_twice_check(s: &SqlStore) {
    const JOBS: usize = 400;
    for i in 0..JOBS {
        submit(s, job_rec(&format!("j{i:04}"), "sync", &[], 0)).await;
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let c = claimant(&format!("s{w}"), &["sync"], &[]);
            let mut mine = Vec::new();
            // Bounded: at most every job, plus one empty claim to stop.
            for _ in 0..=JOBS {
                let Some(j) = s.claim_job(&c, 100).await.unwrap() else {
                    break;
                };
                let done = s
                    .finish_job(
                        &j.job_id,
                        &c.agent_id,
                        j.lease_token,
                        Outcome::Succeeded(vec![]),
                        101,
                    )
                    .await
                    .unwrap();
                assert!(done.is_some(), "a fresh lease was refused");
                mine.push(j.job_id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), JOBS, "a job was never claimed");
    for id in all.iter().step_by(37) {
        assert_eq!(s.job_attempts(id).await.unwrap().len(), 1);
    }
}
on_both!(
    concurrent_claims_never_hand_a_job_out_twice,
    concurrent_claims_never_hand_a_job_out_twice_check
);

/// PostgreSQL plans a prepared statement once for any parameters after a
/// few runs. That generic plan of the claim must walk the pending jobs in
/// queue order and stop at the first it can take, not read and sort every
/// pending job (which made claims slower as the queue and its history
/// grew; migration 0006).
#[tokio::test]
async fn the_claims_generic_plan_walks_the_claim_index_without_sorting() {
    let db = PgDatabase::create().await;
    // Migrates the database.
    let _store = SqlStore::open_postgres(&db.url).await.unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // A history of finished jobs and a queue, as after a busy hour.
    for (state, n) in [("succeeded", 5_000), ("pending", 200), ("running", 20)] {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (job_id, org_id, pool, job_type, payload, state, run_at_ms, \
             attempt_timeout_ms, max_attempts, created_ms) \
             SELECT '{state}-' || i, 'o', 'p', 'sync', '', '{state}', 0, 60000, 3, i \
             FROM generate_series(1, {n}) AS i"
        )))
        .await
        .unwrap();
    }
    conn.execute("ANALYZE jobs").await.unwrap();
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    // The parameter types sqlx sends: text and bigint.
    conn.execute(sqlx::AssertSqlSafe(format!(
        "PREPARE claim(text, text, bigint, bigint, text, text, text, text, bigint) AS {}",
        super::sql_jobs::CLAIM_POSTGRES
    )))
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE claim('a', 's', 99, 10, 'o', 'p', '[\"sync\"]', '[]', 4)",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("jobs_claim"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

/// A pending job wakes the other replicas' dispatchers: the store sends
/// NOTIFY with the insert.
#[tokio::test]
async fn submitting_a_pending_job_notifies_the_other_replicas() {
    let (guard, s) = postgres().await;
    let Guard::Pg(db) = &guard else {
        unreachable!("postgres() keeps a database")
    };
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("tether_jobs").await.unwrap();
    submit(&s, job_rec("j-due", "sync", &[], 0)).await;
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("no notification within 10 s")
        .unwrap();
    assert_eq!(woken.channel(), "tether_jobs");
}
