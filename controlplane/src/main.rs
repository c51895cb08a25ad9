//! `tether-controlplane`: see the crate docs of `tether_controlplane`.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before any thread starts: may execute this program again (tuned malloc).
    tether::malloc::tune();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let config = match tether_controlplane::Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-controlplane: {e}");
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
    match tether_controlplane::run(config, cancel, |_| {}).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "control plane failed");
            eprintln!("tether-controlplane: {e}");
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
