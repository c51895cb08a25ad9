//! The Dial API from another language: the Python client in
//! `clients/python` (grpcio stubs generated from `proto/`, psycopg 3)
//! reaches the machine's real PostgreSQL (127.0.0.1:5432) through a real
//! agent, writes the framing by hand, and gets the control plane's and the
//! agent's refusals as its own errors. Runs `clients/python/tests` with the
//! venv python that scripts/install-test-deps.sh installs as
//! `tether-python-client`.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{Agent, ControlPlane};
use tether::proto::Role;
use tokio::process::Command;

/// The venv python with clients/python/requirements.txt installed.
const PYTHON: &str = "tether-python-client";
/// The only target the agent may reach.
const POSTGRES: &str = "127.0.0.1:5432";
/// The Python suite: a few seconds; generous for a loaded CI machine.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reaches_postgres_through_dial_open() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("pg", 1).await;
    // Only PostgreSQL: the suite checks that anything else is refused.
    let _agent = Agent::start(
        &cp.endpoint(),
        &dir.path().join("agent"),
        Some(&token),
        &[POSTGRES],
    )
    .await;
    let dialer = cp.key(Role::Dialer, "", &[], &["pg"]).await;
    // A valid key without the grant: PERMISSION_DENIED.
    let not_granted = cp.key(Role::Dialer, "", &[], &["elsewhere"]).await;
    // Temporary tables are per session already; a name of its own per run
    // keeps parallel runs apart in the logs too.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = format!("tether_py_{}_{nanos}", std::process::id());

    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new(PYTHON)
        .args(["-m", "unittest", "discover", "-v"])
        .args(["-s", "clients/python/tests"])
        .current_dir(root)
        .env("TETHER_ENDPOINT", cp.endpoint())
        .env("TETHER_CA_FILE", cp.data_dir.join("ca.pem"))
        .env("TETHER_API_KEY", &dialer)
        .env("TETHER_POOL", "pg")
        .env("TETHER_PG_HOST", "127.0.0.1")
        .env("TETHER_PG_PORT", "5432")
        .env("TETHER_PG_USER", "postgres")
        .env("TETHER_PG_DATABASE", "test")
        .env("TETHER_PG_TABLE", &table)
        .env("TETHER_DENIED_KEY", &not_granted)
        .env("TETHER_REFUSED_TARGET", "127.0.0.1:1")
        // Stubs generated in the test's own directory, no bytecode in the
        // source tree.
        .env("TETHER_DIAL_GENERATED_DIR", dir.path().join("generated"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("TETHER_PROTO_DIR")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PYTHON_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!(
            "cannot run {PYTHON}: {e}; install it with scripts/install-test-deps.sh (as root), \
             which makes a venv from clients/python/requirements.txt"
        ),
        Err(_) => panic!("the Python client tests did not finish within {PYTHON_TIMEOUT:?}"),
    };
    let python = format!(
        "{PYTHON} -m unittest ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{python}\ncontrol plane log:\n{}",
        cp.logs.text()
    );
    // unittest writes its verbose report on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("Ran ") && !l.starts_with("Ran 0 ")),
        "{python}"
    );
    eprintln!("{python}");

    // It went through the Dial API: the psycopg and raw channels were
    // opened, the refused target was counted as a policy refusal.
    let opened = cp
        .metric("tether_channels_opened_total{pool=\"pg\",path=\"dial\"}")
        .await;
    assert!(opened >= 4.0, "Dial channels opened: {opened}\n{python}");
    let denied = cp
        .metric("tether_dial_errors_total{reason=\"policy_denied\"}")
        .await;
    assert!(denied >= 2.0, "policy refusals counted: {denied}\n{python}");
}
