//! `tetherctl events`: agent state changes and alerts, listed or followed.

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use tether::proto::{Event, ListEventsRequest, WatchEventsRequest};

use crate::{
    connect::{ConnectArgs, status},
    output::{self, Format},
};

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Keep printing new events as they happen (Ctrl-C stops).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only events of this agent.
    #[arg(long, default_value = "")]
    agent: String,
    /// Only events after this id (to resume); then the oldest first.
    #[arg(long)]
    after: Option<u64>,
    /// How many stored events: the newest, or with --after the next ones.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn print(format: Format, e: &Event) {
    match format {
        Format::Json => output::line(
            &serde_json::json!({
                "id": e.id,
                "time_unix_ms": e.time_unix_ms,
                "agent_id": e.agent_id,
                "pool": e.pool,
                "kind": e.kind,
                "alert": e.alert,
                "detail": e.detail,
            })
            .to_string(),
        ),
        Format::Table => output::line(&format!(
            "{:>6}  {}  {}{:<22} {} ({})  {}",
            e.id,
            output::time(e.time_unix_ms),
            if e.alert { "!" } else { " " },
            e.kind,
            e.agent_id,
            e.pool,
            e.detail
        )),
    }
}

pub(crate) async fn run(c: &ConnectArgs, format: Format, a: EventsArgs) -> anyhow::Result<()> {
    let mut admin = c.admin()?;
    let stored = admin
        .list_events(ListEventsRequest {
            after_id: a.after.unwrap_or(0),
            limit: a.limit,
            agent_id: a.agent.clone(),
            newest: a.after.is_none(),
        })
        .await
        .map_err(|s| status("listing events", s))?
        .into_inner()
        .events;
    let mut last = a.after.unwrap_or(0);
    for e in &stored {
        print(format, e);
        last = e.id;
    }
    if !a.follow {
        if stored.is_empty() && format == Format::Table {
            eprintln!("(no events)");
        }
        return Ok(());
    }
    // Resume right after what was printed. Nothing printed means nothing
    // was stored when we listed: replay from the oldest, so that events
    // recorded between the list and the watch are not lost.
    let mut stream = admin
        .watch_events(WatchEventsRequest {
            after_id: last,
            agent_id: a.agent,
            from_oldest: last == 0,
        })
        .await
        .map_err(|s| status("watching events", s))?
        .into_inner();
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(e)) => print(format, &e),
                Some(Err(s)) => return Err(status("watching events", s)),
                None => {
                    return Err(anyhow::anyhow!("the control plane ended the event stream"))
                        .context("reconnect with --after to resume");
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
