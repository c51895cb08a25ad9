//! `tetherctl jobs`: submit, list, get, cancel, logs.

use std::{io::Read as _, time::Duration};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use tether::proto::{
    CancelJobRequest, GetJobLogsRequest, GetJobRequest, Job, JobState, ListJobsRequest,
    SubmitJobRequest,
};

use crate::{
    admin::parse_duration,
    connect::{ConnectArgs, status},
    output::{self, Format, Table},
};

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Submit a job to a pool; prints its id.
    Submit {
        /// The pool whose agents run it.
        #[arg(long)]
        pool: String,
        /// The job type (a handler the agents declare, or echo / probe).
        #[arg(long = "type")]
        job_type: String,
        /// The payload as text.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// The payload from a file ("-" for stdin).
        #[arg(long)]
        payload_file: Option<String>,
        /// A credential the handler needs, by name (repeatable).
        #[arg(long = "credential")]
        credentials: Vec<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Time allowed per attempt: 30s, 10m, 1h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        timeout: Duration,
        /// Attempts before it fails.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// Submitting the same key again returns the first job.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Wait until it ends and print its result (exit 1 if it failed).
        #[arg(long)]
        wait: bool,
    },
    /// Jobs, newest first.
    List {
        /// Only this pool.
        #[arg(long, default_value = "")]
        pool: String,
        /// Only this state: pending, assigned, running, succeeded, failed,
        /// cancelled, unschedulable.
        #[arg(long)]
        state: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job in detail, with its result.
    Get {
        /// The job id.
        job_id: String,
    },
    /// Cancel a job; a running handler is stopped.
    Cancel {
        /// The job id.
        job_id: String,
        /// Why (kept with the job).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The job's log lines (its handler's stderr, secrets redacted).
    Logs {
        /// The job id.
        job_id: String,
    },
}

fn state_name(s: i32) -> String {
    JobState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({s})"))
}

fn parse_state(s: &str) -> anyhow::Result<JobState> {
    JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase())).with_context(|| {
        format!("{s:?} is not a job state: pending, assigned, running, succeeded, failed, cancelled, unschedulable")
    })
}

fn show(format: Format, j: Job) {
    let result = String::from_utf8_lossy(&j.result).into_owned();
    output::fields(
        format,
        &[
            ("job", j.job_id),
            ("pool", j.pool),
            ("type", j.job_type),
            ("state", state_name(j.state)),
            ("attempts", format!("{}/{}", j.attempts, j.max_attempts)),
            ("agent", j.agent_id),
            ("priority", j.priority.to_string()),
            ("credentials", j.credential_names.join(",")),
            ("submitted", output::time(j.created_unix_ms)),
            ("started", output::time(j.started_unix_ms)),
            ("finished", output::time(j.finished_unix_ms)),
            ("error", j.error),
            ("result", result),
        ],
    );
}

fn ended(state: i32) -> bool {
    !matches!(
        JobState::try_from(state),
        Ok(JobState::Pending | JobState::Assigned | JobState::Running)
    )
}

pub(crate) async fn jobs(c: &ConnectArgs, format: Format, cmd: JobsCommand) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    match cmd {
        JobsCommand::Submit {
            pool,
            job_type,
            payload,
            payload_file,
            credentials,
            priority,
            timeout,
            max_attempts,
            idempotency_key,
            wait,
        } => {
            let payload = match (payload, payload_file) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(f)) if f == "-" => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the payload from stdin")?;
                    buf
                }
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading the payload file {f}"))?
                }
                (None, None) => Vec::new(),
            };
            let job = admin
                .submit_job(SubmitJobRequest {
                    pool,
                    job_type,
                    payload,
                    credential_names: credentials,
                    priority,
                    deadline_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                    max_attempts,
                    idempotency_key,
                })
                .await
                .map_err(|s| status("submitting the job", s))?
                .into_inner();
            if job.state == JobState::Unschedulable as i32 {
                eprintln!("job {} is unschedulable: {}", job.job_id, job.error);
            }
            if !wait {
                output::fields(
                    format,
                    &[("job", job.job_id), ("state", state_name(job.state))],
                );
                return Ok(());
            }
            let id = job.job_id;
            // Bounded by the job's own attempts and timeouts; Ctrl-C stops.
            let done = loop {
                let j = admin
                    .get_job(GetJobRequest { job_id: id.clone() })
                    .await
                    .map_err(|s| status("reading the job", s))?
                    .into_inner();
                if ended(j.state) {
                    break j;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = tokio::signal::ctrl_c() => bail!("stopped waiting; job {id} goes on (tetherctl jobs get {id})"),
                }
            };
            let failed = done.state != JobState::Succeeded as i32;
            let state = state_name(done.state);
            let error = done.error.clone();
            show(format, done);
            if failed {
                bail!("job {id} ended {state}: {error}");
            }
        }
        JobsCommand::List { pool, state, limit } => {
            let state = state
                .as_deref()
                .map(parse_state)
                .transpose()?
                .unwrap_or(JobState::Unspecified);
            let resp = admin
                .list_jobs(ListJobsRequest {
                    pool,
                    state: state as i32,
                    limit,
                })
                .await
                .map_err(|s| status("listing jobs", s))?
                .into_inner();
            let mut t = Table::new(&[
                "JOB",
                "POOL",
                "TYPE",
                "STATE",
                "ATTEMPTS",
                "AGENT",
                "SUBMITTED",
                "ERROR",
            ]);
            for j in resp.jobs {
                t.row(vec![
                    j.job_id,
                    j.pool,
                    j.job_type,
                    state_name(j.state),
                    format!("{}/{}", j.attempts, j.max_attempts),
                    if j.agent_id.is_empty() {
                        "-".into()
                    } else {
                        j.agent_id
                    },
                    output::time(j.created_unix_ms),
                    j.error,
                ]);
            }
            t.print(format);
        }
        JobsCommand::Get { job_id } => {
            let j = admin
                .get_job(GetJobRequest { job_id })
                .await
                .map_err(|s| status("reading the job", s))?
                .into_inner();
            show(format, j);
        }
        JobsCommand::Cancel { job_id, reason } => {
            let j = admin
                .cancel_job(CancelJobRequest { job_id, reason })
                .await
                .map_err(|s| status("cancelling the job", s))?
                .into_inner();
            show(format, j);
        }
        JobsCommand::Logs { job_id } => {
            let resp = admin
                .get_job_logs(GetJobLogsRequest { job_id })
                .await
                .map_err(|s| status("reading the job's logs", s))?
                .into_inner();
            match format {
                Format::Json => {
                    let mut t = Table::new(&["LINE"]);
                    for l in resp.lines {
                        t.row(vec![l]);
                    }
                    t.print(format);
                }
                Format::Table => {
                    for l in resp.lines {
                        output::line(&l);
                    }
                }
            }
        }
    }
    Ok(())
}
