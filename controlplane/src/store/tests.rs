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
    s.insert_token(&tok("t1", 1)).await.unwrap();
    s.enroll("t1", 10, &agent_rec("a1")).await.unwrap();
    let hello = HelloRecord {
        hostname: "h".into(),
        version: "0.1.0".into(),
        capabilities: vec!["probe".into()],
        ..HelloRecord::default()
    };
    s.record_hello("a1", &hello, 20).await.unwrap();
    s.record_heartbeat("a1", 30, 1500, -4).await.unwrap();
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
    for t in 1..=10 {
        s.insert_health_sample("a1", t, &[u8::try_from(t).unwrap()], 3)
            .await
            .unwrap();
    }
    s.insert_health_sample("a2", 5, &[99], 3).await.unwrap();
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
