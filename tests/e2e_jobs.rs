//! Jobs end to end with the real binaries: handlers (real programs) with
//! named credentials and streamed, redacted logs; built-ins; matching on
//! capabilities and credentials; unschedulable jobs and their recovery;
//! cancel reaching the handler; an agent killed mid-job; a late result
//! refused by its fencing token; bad input.

#![allow(clippy::unwrap_used)]

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path};

use support::{Agent, ControlPlane, WAIT, ctl, eventually};
use tether::proto::{
    AgentFrame, CancelJobRequest, GetJobLogsRequest, GetJobRequest, Job, JobAssign, JobState,
    JobSucceeded, JobUpdate, SubmitJobRequest, agent_frame, job_update, server_frame,
};

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> String {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn submit(pool: &str, job_type: &str, payload: &[u8], creds: &[&str]) -> SubmitJobRequest {
    SubmitJobRequest {
        pool: pool.into(),
        job_type: job_type.into(),
        payload: payload.to_vec(),
        credential_names: creds.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    }
}

async fn job(cp: &ControlPlane, id: &str) -> Job {
    cp.admin()
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_state(cp: &ControlPlane, id: &str, state: JobState) -> Job {
    eventually(&format!("job {id} {state:?}"), || async {
        let j = job(cp, id).await;
        (j.state == state as i32).then_some(j)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_with_credentials_and_redacted_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let key_file = dir.path().join("deploy_key");
    std::fs::write(&key_file, "PRIVATE-KEY-MATERIAL-4471\n").unwrap();
    let handed = dir.path().join("handed-path");
    // The handler: logs to stderr (one line leaks the env credential on
    // purpose), checks what it was handed, answers on stdout.
    let handler = script(
        &dir.path().join("sync.sh"),
        &format!(
            r#"input=$(cat)
echo "syncing $input" >&2
echo "using token $TETHER_CREDENTIAL_API_TOKEN" >&2
[ -z "$TETHER_JOIN_TOKEN" ] && echo "the agent's join token is not visible" >&2
echo "$TETHER_CREDENTIAL_DEPLOY_KEY_FILE" > {handed}
mode=$(stat -c %a "$TETHER_CREDENTIAL_DEPLOY_KEY_FILE")
key=$(cat "$TETHER_CREDENTIAL_DEPLOY_KEY_FILE")
[ "$key" = "PRIVATE-KEY-MATERIAL-4471" ] && printf 'synced %s; key ok, mode %s' "$input" "$mode""#,
            handed = handed.display()
        ),
    );
    let token = cp.token("data", 2).await;
    let handler_arg = format!("sync={handler}");
    let key_arg = format!("deploy_key=file:{}", key_file.display());
    // An agent without the credential, and one with it.
    let plain = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("plain"),
        Some(&token),
        &[],
        &["--handler", &handler_arg],
        &[],
    );
    let equipped = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("equipped"),
        Some(&token),
        &[],
        &[
            "--handler",
            &handler_arg,
            "--credential",
            &key_arg,
            "--credential",
            "api_token=env:API_TOKEN",
        ],
        &[("API_TOKEN", "tok-SECRET-9931")],
    );
    plain.logs.wait_for("attached").await;
    equipped.logs.wait_for("attached").await;

    // Through tetherctl, waiting for the result.
    let (ok, out, err) = ctl(
        &cp,
        &[
            "jobs",
            "submit",
            "--pool",
            "data",
            "--type",
            "sync",
            "--payload",
            "orders",
            "--credential",
            "deploy_key",
            "--credential",
            "api_token",
            "--wait",
        ],
        b"",
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("synced orders; key ok, mode 600"), "{out}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        out.contains(&equipped.id()),
        "only the agent with the credentials runs it: {out}"
    );
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("job"))
        .unwrap()
        .trim()
        .to_owned();
    // The logs streamed back, with the credential's value masked.
    let logs = cp
        .admin()
        .get_job_logs(GetJobLogsRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .lines
        .join("\n");
    assert!(logs.contains("syncing orders"), "{logs}");
    assert!(
        logs.contains("the agent's join token is not visible"),
        "{logs}"
    );
    assert!(
        !logs.contains("tok-SECRET-9931") && logs.contains("[redacted]"),
        "{logs}"
    );
    // The credential file is gone after the job.
    let path = std::fs::read_to_string(&handed).unwrap();
    assert!(!Path::new(path.trim()).exists(), "{path} was left behind");
    // Only names left the agent: the secrets are in no log of the control plane.
    let cp_log = cp.logs.text();
    assert!(!cp_log.contains("tok-SECRET-9931") && !cp_log.contains("PRIVATE-KEY-MATERIAL"));

    // Built-ins: echo and probe (which obeys the egress policy: none here).
    let mut admin = cp.admin();
    let e = admin
        .submit_job(submit("data", "echo", b"ping", &[]))
        .await
        .unwrap()
        .into_inner();
    let done = wait_state(&cp, &e.job_id, JobState::Succeeded).await;
    assert_eq!(done.result, b"ping");
    let mut p = submit("data", "probe", br#"{"host": "127.0.0.1", "port": 1}"#, &[]);
    p.max_attempts = 1;
    let p = admin.submit_job(p).await.unwrap().into_inner();
    let failed = wait_state(&cp, &p.job_id, JobState::Failed).await;
    assert!(failed.error.contains("egress_allow"), "{}", failed.error);

    // Idempotency: the same key, the same job.
    let mut k = submit("data", "echo", b"once", &[]);
    k.idempotency_key = "nightly-2026-11-25".into();
    let first = admin.submit_job(k.clone()).await.unwrap().into_inner();
    let again = admin.submit_job(k).await.unwrap().into_inner();
    assert_eq!(first.job_id, again.job_id);

    // The audit log has every submission: a new job's entry is stored with
    // the job, the repeat's on its own, both naming the one job.
    let audit = support::audit_events(&mut admin).await;
    let for_key: Vec<_> = audit
        .iter()
        .filter(|e| {
            e.action == "SubmitJob" && e.target == format!("job {} pool data", first.job_id)
        })
        .collect();
    assert_eq!(for_key.len(), 2, "{audit:?}");
    assert!(for_key.iter().all(|e| e.result == "ok"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_jobs_say_why_and_run_when_an_agent_can() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let token = cp.token("etl", 2).await;
    let _echo_only = Agent::start(&cp.endpoint(), &dir.path().join("a"), Some(&token), &[]).await;
    let mut admin = cp.admin();
    let j = admin
        .submit_job(submit("etl", "report", b"q3", &["warehouse_pw"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, JobState::Unschedulable as i32);
    assert!(
        j.error.contains("runs job type \"report\"") && j.error.contains("echo"),
        "{}",
        j.error
    );
    let (ok, out, _) = ctl(&cp, &["jobs", "list", "--state", "unschedulable"], b"").await;
    assert!(ok && out.contains(&j.job_id), "{out}");

    // An agent that can run it arrives: the job runs.
    let handler = script(
        &dir.path().join("report.sh"),
        r#"printf 'report %s' "$(cat)""#,
    );
    let b = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("b"),
        Some(&token),
        &[],
        &[
            "--handler",
            &format!("report={handler}"),
            "--credential",
            "warehouse_pw=env:WAREHOUSE_PW",
        ],
        &[("WAREHOUSE_PW", "pw")],
    );
    b.logs.wait_for("attached").await;
    let done = wait_state(&cp, &j.job_id, JobState::Succeeded).await;
    assert_eq!(
        (done.result.as_slice(), done.agent_id.as_str()),
        (&b"report q3"[..], b.id().as_str())
    );

    // Bad input: clear errors, nothing else touched.
    let mut big = submit("etl", "echo", &[], &[]);
    big.payload = vec![0; 1024 * 1024 + 1];
    let e = admin.submit_job(big).await.unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("over the limit"),
        "{e:?}"
    );
    let e = admin
        .submit_job(submit("etl", "no spaces", b"", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = admin
        .submit_job(submit("etl", "echo", b"", &["bad/name"]))
        .await
        .unwrap_err();
    assert!(e.message().contains("credential name"), "{e:?}");
    // Refusals are audited too, against the pool.
    let audit = support::audit_events(&mut admin).await;
    assert!(
        audit.iter().any(|a| a.action == "SubmitJob"
            && a.target == "pool etl"
            && a.result == "InvalidArgument"),
        "{audit:?}"
    );
    let e = admin
        .get_job(GetJobRequest {
            job_id: "job-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin
        .cancel_job(CancelJobRequest {
            job_id: j.job_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("already ended"), "{e:?}");
    assert_eq!(job(&cp, &j.job_id).await.state, JobState::Succeeded as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_handler() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let mark = dir.path().join("cancelled");
    let started = dir.path().join("started");
    let handler = script(
        &dir.path().join("long.sh"),
        &format!(
            "trap 'echo cancelled > {mark}; exit 143' TERM\ntouch {started}\n\
             i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
            mark = mark.display(),
            started = started.display()
        ),
    );
    let token = cp.token("p", 1).await;
    let agent = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("a"),
        Some(&token),
        &[],
        &["--handler", &format!("long={handler}")],
        &[],
    );
    agent.logs.wait_for("attached").await;
    let j = cp
        .admin()
        .submit_job(submit("p", "long", b"", &[]))
        .await
        .unwrap()
        .into_inner();
    wait_state(&cp, &j.job_id, JobState::Running).await;
    eventually("the handler started", || async {
        started.exists().then_some(())
    })
    .await;
    let (ok, out, err) = ctl(
        &cp,
        &["jobs", "cancel", &j.job_id, "--reason", "wrong day"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("cancelled") && out.contains("wrong day"),
        "{out}"
    );
    eventually("the handler got SIGTERM", || async {
        mark.exists().then_some(())
    })
    .await;
    agent.logs.wait_for("job stopped").await;
    assert_eq!(job(&cp, &j.job_id).await.state, JobState::Cancelled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_completes_elsewhere_and_a_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let release = dir.path().join("release");
    let record = dir.path().join("record");
    let handler = script(
        &dir.path().join("slow.sh"),
        &format!(
            "echo \"$TETHER_JOB_ID $TETHER_JOB_LEASE_TOKEN\" >> {record}\n\
             i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             printf 'done with lease %s' \"$TETHER_JOB_LEASE_TOKEN\"",
            record = record.display(),
            release = release.display()
        ),
    );
    let handler_arg = format!("slow={handler}");
    let token = cp.token("p", 2).await;
    let first = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("first"),
        Some(&token),
        &[],
        &["--handler", &handler_arg],
        &[],
    );
    first.logs.wait_for("attached").await;
    let first_id = first.id();
    let j = cp
        .admin()
        .submit_job(submit("p", "slow", b"", &[]))
        .await
        .unwrap()
        .into_inner();
    wait_state(&cp, &j.job_id, JobState::Running).await;
    first.kill9().await;
    // Its lease lapses (three heartbeats) and the job waits for an agent.
    wait_state(&cp, &j.job_id, JobState::Pending).await;
    let second = Agent::spawn_with(
        &cp.endpoint(),
        &dir.path().join("second"),
        Some(&token),
        &[],
        &["--handler", &handler_arg],
        &[],
    );
    second.logs.wait_for("attached").await;
    wait_state(&cp, &j.job_id, JobState::Running).await;
    std::fs::write(&release, "").unwrap();
    let done = wait_state(&cp, &j.job_id, JobState::Succeeded).await;
    assert_eq!(done.result, b"done with lease 2");
    assert_eq!(
        (done.attempts, done.agent_id.as_str()),
        (2, second.id().as_str())
    );
    assert_ne!(done.agent_id, first_id);

    // A late result under an old lease: a hand-driven agent takes a job,
    // goes silent past its lease, another agent finishes it, then the
    // silent one reports. Its token is stale: refused, told to stop.
    drop(second);
    let mut raw = cp.raw_session_running("late", &["echo"]).await;
    let (j, assign) = submit_to_raw(&cp, &mut raw, "late", b"fresh").await;
    assert_eq!(
        (assign.job_id.as_str(), assign.lease_token),
        (j.job_id.as_str(), 1)
    );
    wait_state(&cp, &j.job_id, JobState::Pending).await;
    let token = cp.token("late", 1).await;
    let _finisher = Agent::start(
        &cp.endpoint(),
        &dir.path().join("finisher"),
        Some(&token),
        &[],
    )
    .await;
    let done = wait_state(&cp, &j.job_id, JobState::Succeeded).await;
    assert_eq!(done.result, b"fresh");
    raw.tx
        .send(AgentFrame {
            kind: Some(agent_frame::Kind::JobUpdate(JobUpdate {
                job_id: j.job_id.clone(),
                lease_token: 1,
                kind: Some(job_update::Kind::Succeeded(JobSucceeded {
                    result: b"late".to_vec(),
                })),
            })),
        })
        .await
        .unwrap();
    // The sweep told it to stop when its lease lapsed; now the refusal.
    let refused = next_of(&mut raw, |k| match k {
        server_frame::Kind::JobCancel(c) if c.reason.contains("stale lease") => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(refused.lease_token, 1);
    cp.logs
        .wait_for_text("refused a job update: stale lease")
        .await;
    let after = job(&cp, &j.job_id).await;
    assert_eq!(
        (after.result.as_slice(), after.state),
        (&b"fresh"[..], JobState::Succeeded as i32)
    );
}

/// Submits an `echo` job to `pool` and waits for its assignment on the
/// hand-driven session `raw`.
async fn submit_to_raw(
    cp: &ControlPlane,
    raw: &mut support::RawSession,
    pool: &str,
    payload: &[u8],
) -> (Job, JobAssign) {
    let job = cp
        .admin()
        .submit_job(submit(pool, "echo", payload, &[]))
        .await
        .unwrap()
        .into_inner();
    let assign = next_of(raw, |k| match k {
        server_frame::Kind::JobAssign(a) => Some(a),
        _ => None,
    })
    .await;
    (job, assign)
}

/// The next frame of kind `pick` on a raw session, within `WAIT`.
async fn next_of<T>(
    raw: &mut support::RawSession,
    pick: impl Fn(server_frame::Kind) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let f = raw.inbound.message().await.unwrap().unwrap();
            if let Some(t) = f.kind.and_then(&pick) {
                return t;
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_updates_are_acknowledged_and_a_resent_one_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let mut raw = cp.raw_session_running("acks", &["echo"]).await;
    let (j, assign) = submit_to_raw(&cp, &mut raw, "acks", b"in").await;
    // The agent reports its result twice, as it does when the session the
    // first report travelled on was lost before the acknowledgement came.
    for result in [&b"first"[..], b"again"] {
        raw.tx
            .send(AgentFrame {
                kind: Some(agent_frame::Kind::JobUpdate(JobUpdate {
                    job_id: assign.job_id.clone(),
                    lease_token: assign.lease_token,
                    kind: Some(job_update::Kind::Succeeded(JobSucceeded {
                        result: result.to_vec(),
                    })),
                })),
            })
            .await
            .unwrap();
        let ack = next_of(&mut raw, |k| match k {
            server_frame::Kind::JobAck(a) => Some(a),
            _ => None,
        })
        .await;
        assert_eq!(
            (ack.job_id.as_str(), ack.lease_token),
            (j.job_id.as_str(), assign.lease_token)
        );
    }
    let done = job(&cp, &j.job_id).await;
    assert_eq!(
        (done.state, done.result.as_slice(), done.attempts),
        (JobState::Succeeded as i32, &b"first"[..], 1)
    );
    assert!(
        !cp.logs.text().contains("refused a job update"),
        "a resent final update is not an error"
    );
}
