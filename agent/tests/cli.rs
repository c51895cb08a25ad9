//! The agent refuses to start without what it needs, saying what to set.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether-agent"));
    cmd.args(args)
        .env_remove("TETHER_ENDPOINT")
        .env_remove("TETHER_JOIN_TOKEN")
        .env_remove("TETHER_JOIN_TOKEN_FILE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn without_an_endpoint_the_agent_says_how_to_give_one() {
    let (code, err) = run(&[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("endpoint is required") && err.contains("TETHER_ENDPOINT"),
        "{err}"
    );
}

#[test]
fn without_identity_or_token_the_agent_says_how_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (code, err) = run(
        &[
            "--endpoint",
            "https://127.0.0.1:1",
            "--state-dir",
            state.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    // 2, a configuration error: systemd does not restart it in a loop.
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not enrolled yet and has no join token"),
        "{err}"
    );
    assert!(err.contains("tetherctl tokens create"), "{err}");
}

#[test]
fn a_damaged_token_is_refused_without_echoing_it() {
    let (code, err) = run(
        &["--endpoint", "https://127.0.0.1:1"],
        &[("TETHER_JOIN_TOKEN", "tether-join.v1.s3cr3t")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("join token") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "the token leaked: {err}");
}

#[test]
fn a_bad_egress_rule_names_the_rule_and_the_fix() {
    let (code, err) = run(
        &["--endpoint", "https://127.0.0.1:1", "--allow", "db:0"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid egress_allow") && err.contains("db:0"),
        "{err}"
    );
}
