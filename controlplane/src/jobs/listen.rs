//! Hearing of new work from other replicas: PostgreSQL `LISTEN
//! tether_jobs`. Notifications are not durable, so a lost connection is
//! followed by a wake-up (the dispatcher catches up) and a reconnect; the
//! dispatcher's slow poll covers anything else.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgListener;
use tracing::{debug, warn};

use crate::state::Shared;

/// Wait before reconnecting after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub async fn run(state: Shared, url: SecretString) {
    loop {
        let mut listener = match PgListener::connect(url.expose_secret()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for new jobs on PostgreSQL; retrying (the 1 s poll still runs)");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = state.cancel.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen("tether_jobs").await {
            warn!(error = %e, "LISTEN tether_jobs failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(RETRY) => continue,
                () = state.cancel.cancelled() => return,
            }
        }
        debug!("listening for new jobs");
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => state.jobs.wake(),
                    // The connection was lost (and is re-opened by the next
                    // call): what was sent meanwhile is gone, so catch up.
                    Ok(None) => state.jobs.wake(),
                    Err(e) => {
                        warn!(error = %e, "the job notification connection failed; reconnecting");
                        state.jobs.wake();
                        break;
                    }
                },
                () = state.cancel.cancelled() => return,
            }
        }
    }
}
