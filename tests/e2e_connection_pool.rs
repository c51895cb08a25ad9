//! A real JDBC connection pool through a gateway port while the agent that
//! serves it dies: HikariCP with pgJDBC runs 10,000 inserts on 10
//! connections, the serving agent is killed (SIGKILL) mid-run, a second
//! agent of the pool takes over, and the rows PostgreSQL holds are exactly
//! the ones the client believes it committed. The program is
//! tests/java/HikariFailover.java.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;

use support::{Agent, ControlPlane, WAIT};
use tokio::{io::AsyncWriteExt, process::Command};

/// Debian's libhikaricp-java, libslf4j-java and libpostgresql-jdbc-java.
const JARS: [&str; 3] = [
    "/usr/share/java/HikariCP.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/postgresql.jar",
];
const DIRECT: &str = "postgres://postgres@127.0.0.1:5432/test";
const TOTAL: u32 = 10_000;

/// `psql` straight to PostgreSQL (not through the tunnel).
fn psql(sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([DIRECT, "-tAc", sql])
        .output()
        .expect("psql is needed: run scripts/install-test-deps.sh");
    assert!(out.status.success(), "psql {sql:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Drops the test's table whatever happens.
struct Table(String);

impl Drop for Table {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([DIRECT, "-qc", &format!("drop table if exists {}", self.0)])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hikari_pool_recovers_when_its_agent_is_killed_and_loses_no_commit() {
    for jar in JARS {
        assert!(
            std::path::Path::new(jar).exists(),
            "{jar} is missing: run scripts/install-test-deps.sh (libhikaricp-java, libpostgresql-jdbc-java)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("db", 2).await;
    let first = Agent::start(
        &cp.endpoint(),
        &dir.path().join("first"),
        Some(&token),
        &["127.0.0.1:5432"],
    )
    .await;
    let gw = cp
        .gateway("pg", "db", "127.0.0.1:5432".parse().unwrap())
        .await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = Table(format!("hikari_{}_{nanos}", std::process::id()));

    // The pool opens its 10 connections through the only agent there is.
    let program = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/java/HikariFailover.java"
    );
    let mut cmd = Command::new("java");
    cmd.args(["-cp", &JARS.join(":"), program])
        .arg(format!("jdbc:postgresql://{gw}/test"))
        .args(["postgres", &table.0, &TOTAL.to_string(), "3000", "9000"]);
    let (mut java, output) = support::spawn_with_stdin(cmd, Stdio::piped());
    let mut stdin = java.stdin.take().unwrap();

    // Mid-run: a second agent joins, the first dies. The program holds
    // query 9,000 and later until the kill is done, so the kill lands while
    // the pool is busy.
    output.wait_for_text("HALFWAY").await;
    let _second = Agent::start(
        &cp.endpoint(),
        &dir.path().join("second"),
        Some(&token),
        &["127.0.0.1:5432"],
    )
    .await;
    first.kill9().await;
    stdin.write_all(b"killed\n").await.unwrap();

    let status = tokio::time::timeout(WAIT * 4, java.wait())
        .await
        .expect("the Java program finishes")
        .unwrap();
    let text = output.text();
    assert!(status.success(), "HikariFailover failed:\n{text}");
    let done = text
        .lines()
        .find(|l| l.starts_with("HIKARI_OK"))
        .unwrap_or_else(|| panic!("no result line:\n{text}"));
    assert!(
        done.contains(&format!("committed={TOTAL} rows={TOTAL}")),
        "{done}"
    );
    eprintln!("{done}");

    // PostgreSQL itself, not through the tunnel, holds exactly those rows.
    assert_eq!(
        psql(&format!(
            "select count(*), count(distinct id), min(id), max(id), sum(v) from {}",
            table.0
        )),
        format!(
            "{TOTAL}|{TOTAL}|1|{TOTAL}|{}",
            7 * u64::from(TOTAL) * (u64::from(TOTAL) + 1) / 2
        )
    );
    // Every query after the kill went through the second agent: the first
    // is gone, and the session count says only one remains.
    assert_eq!(cp.metric("tether_agent_sessions").await, 1.0);
}
