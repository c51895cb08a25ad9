//! `tether-agent`: see the crate docs of `tether_agent`.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match tether_agent::Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-agent: {e}");
            return ExitCode::from(2);
        }
    };
    tether::logging::init(config.log_format, &config.log_level);
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
    let agent = tokio::spawn(tether_agent::run(config, cancel));
    match agent.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "agent stopped");
            eprintln!("tether-agent: {e}");
            ExitCode::FAILURE
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
