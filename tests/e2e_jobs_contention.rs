//! Exactly once under contention: 20 agents take 5,000 jobs at once — with
//! three control-plane replicas on one PostgreSQL database when the run is
//! on PostgreSQL (`TETHER_TEST_STORE=postgres`), with the one control plane
//! SQLite allows otherwise. Every job must succeed exactly once: one
//! attempt in the store, one run in the handlers' own record.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashMap, os::unix::fs::PermissionsExt, time::Duration};

use futures_util::{StreamExt, stream};
use support::{Admin, Agent, ControlPlane};
use tether::proto::{GetJobRequest, Job, JobState, SubmitJobRequest};

const AGENTS: usize = 20;
const JOBS: usize = 5_000;
/// Submissions in flight at once.
const SUBMITTERS: usize = 16;
/// The whole run's bound.
const DEADLINE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_succeeds_exactly_once_under_contention() {
    support::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let first = ControlPlane::start(&dir.path().join("cp0")).await;
    let postgres = std::env::var("TETHER_TEST_STORE").as_deref() == Ok("postgres");
    let mut replicas = vec![first];
    if postgres {
        for n in 1..3 {
            let r = ControlPlane::replica_of(&replicas[0], &dir.path().join(format!("cp{n}")), &[])
                .await;
            replicas.push(r);
        }
    }
    let key = replicas[0].api_key();
    let admins: Vec<Admin> = replicas.iter().map(|cp| cp.admin_with(&key)).collect();

    // The handlers' own record: one line per run, appended atomically.
    let record = dir.path().join("record");
    let handler = dir.path().join("noop.sh");
    std::fs::write(
        &handler,
        format!(
            "#!/bin/sh\necho \"$TETHER_JOB_ID $TETHER_JOB_LEASE_TOKEN\" >> {}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755)).unwrap();
    let handler_arg = format!("noop={}", handler.display());

    let token = replicas[0]
        .token("crowd", u32::try_from(AGENTS).unwrap())
        .await;
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        // Spread over the replicas, as a load balancer would.
        let cp = &replicas[n % replicas.len()];
        agents.push(Agent::spawn_with(
            &cp.endpoint(),
            &dir.path().join(format!("agent{n}")),
            Some(&token),
            &[],
            &["--handler", &handler_arg, "--max-concurrent-jobs", "4"],
            &[],
        ));
    }
    for a in &agents {
        a.logs.wait_for("attached").await;
    }

    let submitted: Vec<String> = stream::iter(0..JOBS)
        .map(|i| {
            let mut admin = admins[i % admins.len()].clone();
            async move {
                admin
                    .submit_job(SubmitJobRequest {
                        pool: "crowd".into(),
                        job_type: "noop".into(),
                        max_attempts: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .job_id
            }
        })
        .buffer_unordered(SUBMITTERS)
        .collect()
        .await;
    assert_eq!(submitted.len(), JOBS);

    // Bounded: until every job has run once, or the deadline.
    let started = tokio::time::Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let n = text.lines().count();
        if n >= JOBS {
            break text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {n} of {JOBS} jobs ran within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut runs: HashMap<&str, Vec<&str>> = HashMap::new();
    for l in lines.lines() {
        let (id, token) = l.split_once(' ').unwrap();
        runs.entry(id).or_default().push(token);
    }
    for id in &submitted {
        assert_eq!(
            runs.get(id.as_str()).map(Vec::as_slice),
            Some(&["1"][..]),
            "job {id} did not run exactly once under its first lease"
        );
    }
    assert_eq!(runs.len(), JOBS, "the handlers ran jobs nobody submitted");

    // The store agrees: every job succeeded, with exactly one attempt (one
    // lease: no two ever coexisted).
    let states: Vec<Job> = stream::iter(submitted.iter().enumerate())
        .map(|(i, id)| {
            let mut admin = admins[i % admins.len()].clone();
            async move {
                // A succeeded update may trail the handler's record line.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let j = admin
                        .get_job(GetJobRequest { job_id: id.clone() })
                        .await
                        .unwrap()
                        .into_inner();
                    if j.state == JobState::Succeeded as i32
                        || tokio::time::Instant::now() > deadline
                    {
                        return j;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(SUBMITTERS)
        .collect()
        .await;
    for j in &states {
        assert_eq!(
            (j.state, j.attempts),
            (JobState::Succeeded as i32, 1),
            "job {} ended {:?} after {} attempt(s): {}",
            j.job_id,
            JobState::try_from(j.state),
            j.attempts,
            j.error
        );
    }
    eprintln!(
        "{JOBS} jobs on {} replica(s) and {AGENTS} agents: all ran once in {:.1} s",
        replicas.len(),
        started.elapsed().as_secs_f64()
    );
}
