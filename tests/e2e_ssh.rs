//! `tetherctl dial` as OpenSSH's `ProxyCommand`: a real `sshd` on
//! 127.0.0.1 (a throwaway host key and user key), reached only through an
//! agent, runs a command for a real `ssh` client.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::{Agent, ControlPlane, WAIT};
use tokio::process::Command;

/// Where Debian's openssh-server puts the daemon (scripts/install-test-deps.sh).
const SSHD: &str = "/usr/sbin/sshd";

async fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tether-test", "-f"])
        .arg(path)
        .output()
        .await
        .expect("ssh-keygen is needed: run scripts/install-test-deps.sh");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// `id ARGS`: who runs the test.
async fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_a_command_through_tetherctl_dial_as_proxy_command() {
    assert!(
        Path::new(SSHD).is_file(),
        "{SSHD} is missing: run scripts/install-test-deps.sh (package openssh-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key")).await;
    keygen(&d.join("user_key")).await;
    let authorized = d.join("authorized_keys");
    std::fs::copy(d.join("user_key.pub"), &authorized).unwrap();
    // sshd, run as root, wants its privilege separation directory (on
    // /run, which a reboot empties).
    let user = id(&["-un"]).await;
    if id(&["-u"]).await == "0" {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let port = support::free_port();
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
             PidFile {pid}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n",
            host = d.join("host_key").display(),
            auth = authorized.display(),
            pid = d.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(SSHD);
    cmd.args(["-D", "-e", "-f"]).arg(&config);
    let (mut sshd, sshd_logs) = support::spawn(cmd);
    sshd_logs
        .wait_for_text("Server listening on 127.0.0.1")
        .await;

    let cp = ControlPlane::start(&d.join("cp")).await;
    let token = cp.token("ssh", 1).await;
    let target = format!("127.0.0.1:{port}");
    let _agent = Agent::start(&cp.endpoint(), &d.join("agent"), Some(&token), &[&target]).await;

    // The client trusts exactly the throwaway host key.
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let known = d.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
    let proxy = format!(
        "{} --endpoint {} --data-dir {} dial --pool ssh %h:%p",
        support::binary("tetherctl").display(),
        cp.endpoint(),
        cp.data_dir.display()
    );
    let run = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(d.join("user_key"))
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg("echo through-tether-$((6*7))")
        .env_remove("TETHER_API_KEY")
        .output();
    let out = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd_logs.text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-tether-42\n");
    // It went through the tunnel: one channel opened by the Dial API.
    assert_eq!(
        cp.metric("tether_channels_opened_total{pool=\"ssh\",path=\"dial\"}")
            .await,
        1.0
    );
    sshd.kill().await.unwrap();
}
