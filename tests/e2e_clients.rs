//! Real clients through a real agent to the machine's real databases:
//! psql and the PostgreSQL JDBC driver through a gateway port to
//! PostgreSQL (127.0.0.1:5432), the MariaDB client to MariaDB
//! (127.0.0.1:3306), and tokio-postgres over the SDK's `dial`.
//!
//! These need the services and clients that scripts/check-services.sh
//! checks; a missing one fails the test with what to install or start.

#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, process::Output};

use support::{Agent, ControlPlane};
use tether::dial::{Destination, Dialer};

const POSTGRES: &str = "127.0.0.1:5432";
const MARIADB: &str = "127.0.0.1:3306";

/// A control plane and one agent of pool `db` allowed to reach both
/// databases.
async fn setup(dir: &std::path::Path) -> (ControlPlane, Agent) {
    let cp = ControlPlane::start(&dir.join("cp")).await;
    let token = cp.token("db", 1).await;
    let agent = Agent::start(
        &cp.endpoint(),
        &dir.join("agent"),
        Some(&token),
        &[POSTGRES, MARIADB],
    )
    .await;
    (cp, agent)
}

/// Runs a client program; a missing program fails with the fix.
async fn run(program: &str, args: &[&str]) -> Output {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run {program}: {e}; install the test tools with scripts/install-test-deps.sh (as root)"
        ),
    }
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_jdbc_through_the_gateway_get_the_right_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _agent) = setup(dir.path()).await;
    let gw = cp.gateway("pg", "db", POSTGRES.parse().unwrap()).await;
    let conninfo = format!(
        "host={} port={} user=postgres dbname=test",
        gw.ip(),
        gw.port()
    );
    let out = run(
        "psql",
        &[
            &conninfo,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            "create temp table t(x int); insert into t select generate_series(1, 1000); select count(*), sum(x) from t;",
        ],
    )
    .await;
    let stdout = check(&out, "psql through the gateway");
    assert!(
        stdout.lines().any(|l| l == "1000|500500"),
        "psql printed {stdout:?}"
    );

    let url = format!("jdbc:postgresql://{gw}/test");
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "{jar} is missing: install libpostgresql-jdbc-java (scripts/install-test-deps.sh)"
    );
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/JdbcQuery.java");
    let out = run("java", &["-cp", jar, program, &url, "postgres", "250"]).await;
    let stdout = check(&out, "the JDBC program through the gateway");
    assert!(
        stdout.contains("JDBC_OK rows=250"),
        "JDBC printed {stdout:?}"
    );

    let opened = cp
        .metric("tether_channels_opened_total{pool=\"db\",path=\"gateway\"}")
        .await;
    assert!(
        opened >= 2.0,
        "the gateway channels were not counted: {opened}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_client_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _agent) = setup(dir.path()).await;
    let gw: SocketAddr = cp.gateway("maria", "db", MARIADB.parse().unwrap()).await;
    let port = gw.port().to_string();
    let out = run(
        "mysql",
        &[
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &port,
            "-u",
            "root",
            "test",
            "-N",
            "-e",
            "create temporary table t(x int); insert into t values (6), (7); select sum(x), count(*) from t;",
        ],
    )
    .await;
    let stdout = check(&out, "the MariaDB client through the gateway");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["13", "2"]),
        "mysql printed {stdout:?}"
    );

    // MariaDB Connector/J, the JVM connectors' driver, through the same gateway.
    let jar = "/usr/share/java/mariadb-java-client.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "{jar} is missing: install libmariadb-java (scripts/install-test-deps.sh)"
    );
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/JdbcQuery.java");
    let url = format!("jdbc:mariadb://{gw}/test");
    let out = run("java", &["-cp", jar, program, &url, "root", "250"]).await;
    let stdout = check(&out, "MariaDB Connector/J through the gateway");
    assert!(
        stdout.contains("JDBC_OK rows=250 sum=219625"),
        "JDBC printed {stdout:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_the_sdk_dial() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, agent) = setup(dir.path()).await;
    let dialer = Dialer::connect(&cp.endpoint(), &cp.credentials()).unwrap();
    let stream = dialer
        .dial(Destination::pool("db", "127.0.0.1", 5432))
        .await
        .unwrap();
    assert_eq!(stream.agent_id(), agent.id());
    let mut config = tokio_postgres::Config::new();
    config.user("postgres").dbname("test");
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query("select n, n * n from generate_series(1, 100) as n", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    let last: i32 = rows[99].get(1);
    assert_eq!(last, 10_000);
    drop(client);
    driver.await.unwrap().unwrap();
}
