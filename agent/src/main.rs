//! `tether-agent`: see the crate docs of `tether_agent`.

use std::{process::ExitCode, sync::Arc};

use tether_agent::{
    Stopped,
    recent_logs::RecentLogs,
    shared::{RESTART_EXIT_CODE, Shared},
};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before any thread starts: may execute this program again (tuned malloc).
    tether::malloc::tune();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let config = match tether_agent::Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // Every line that passes the filter also goes, redacted, to the ring
    // buffer the `logs` command reads.
    let logs = RecentLogs::default();
    tether::logging::init_with(config.log_format, &config.log_level, Some(logs.clone()));
    let shared = Arc::new(Shared::new(logs));
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    // Ends with the process: it waits for a signal, then cancels.
    tokio::spawn(async move {
        wait_for_signal().await;
        signals.cancel();
    });
    // On a worker, not in main's block_on: the session loop polls the
    // tunnel's inbound side, and waking the main thread for every frame
    // costs a futex round trip.
    let agent = tokio::spawn(tether_agent::run(config, shared, cancel));
    match agent.await {
        Ok(Ok(Stopped::Cancelled)) => ExitCode::SUCCESS,
        Ok(Ok(Stopped::Restart)) => ExitCode::from(RESTART_EXIT_CODE),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "agent stopped");
            eprintln!("tether-agent: {e}");
            // A missing join token is a configuration error: a restart
            // cannot fix it (systemd: RestartPreventExitStatus=2).
            if e.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tether-agent: the agent task failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes).
async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
