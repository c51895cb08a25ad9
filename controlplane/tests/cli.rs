//! The binary refuses bad settings before it opens any socket, with an
//! error that names the setting, where it came from and the fix.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-controlplane"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("TETHER_LISTEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_listen_address_names_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&["--listen", "8443"], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid listen \"8443\" (from flag --listen)"),
        "{err}"
    );
    assert!(err.contains("e.g. 0.0.0.0:8443"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing may be created before validation"
    );
}

#[test]
fn a_typo_in_the_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cp.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:0\nheartbeat_intervall: 5s\n").unwrap();
    let (code, err) = run(&["--config", file.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key \"heartbeat_intervall\""), "{err}");
    assert!(
        err.contains("heartbeat_interval"),
        "the message must list the valid keys: {err}"
    );
}

#[test]
fn a_port_in_use_is_reported_with_the_setting_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(
        &["--listen", &addr, "--ops-listen", "127.0.0.1:0"],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} (gRPC)")),
        "{err}"
    );
    assert!(err.contains("change --listen"), "{err}");
}

#[test]
fn a_malformed_bootstrap_key_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "not-a-key\n").unwrap();
    let (code, err) = run(
        &[
            "--bootstrap-api-key-file",
            key.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot use the bootstrap API key file"),
        "{err}"
    );
    assert!(err.contains("tether-key.v1."), "{err}");
    assert!(
        !err.contains("not-a-key"),
        "the file's content must not be echoed: {err}"
    );
}
