//! Listing and watching agent events.

use std::{pin::Pin, time::Duration};

use futures_util::Stream;
use tether::proto::{Event, ListEventsRequest, ListEventsResponse, WatchEventsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{
    auth::Principal,
    state::{Shared, store_status},
    store::EventRecord,
};

/// Default and largest page.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// A watcher also polls the store this often: events stored by other
/// replicas do not wake this one.
const POLL: Duration = Duration::from_secs(1);
/// Events buffered per watcher before the store is read again.
const WATCH_BUFFER: usize = 64;

/// The stream WatchEvents returns.
pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

fn to_proto(e: EventRecord) -> Event {
    Event {
        id: e.id,
        time_unix_ms: e.time_ms,
        agent_id: e.agent_id,
        pool: e.pool,
        kind: e.kind,
        detail: e.detail,
        alert: e.alert,
    }
}

fn agent_filter(id: &str) -> Result<Option<&str>, Status> {
    if id.len() > 128 {
        return Err(Status::invalid_argument("agent_id is too long"));
    }
    Ok((!id.is_empty()).then_some(id))
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
    r: ListEventsRequest,
) -> Result<ListEventsResponse, Status> {
    let limit = match r.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let events = state
        .store
        .list_events(
            &who.org_id,
            r.after_id,
            agent_filter(&r.agent_id)?,
            limit,
            r.newest,
        )
        .await
        .map_err(|e| store_status("listing events", e))?;
    Ok(ListEventsResponse {
        events: events.into_iter().map(to_proto).collect(),
    })
}

pub(super) async fn watch(
    state: &Shared,
    who: &Principal,
    r: WatchEventsRequest,
) -> Result<EventStream, Status> {
    agent_filter(&r.agent_id)?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let state = state.clone();
    let org = who.org_id.clone();
    // Subscribed before reading the start, so nothing falls in between.
    let mut woken = state.events.subscribe();
    let mut last = match r.after_id {
        0 if r.from_oldest => 0,
        // 0 = only new events.
        0 => state
            .store
            .last_event_id(&org)
            .await
            .map_err(|e| store_status("reading events", e))?,
        id => id,
    };
    // Ends when the caller hangs up (send fails or `closed` fires) or at
    // shutdown.
    state.tracker.clone().spawn(async move {
        let agent = (!r.agent_id.is_empty()).then_some(r.agent_id);
        loop {
            let page = match state
                .store
                .list_events(&org, last, agent.as_deref(), DEFAULT_LIMIT, false)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(store_status("reading events", e))).await;
                    return;
                }
            };
            let full = page.len() == DEFAULT_LIMIT as usize;
            for e in page {
                last = e.id;
                if tx.send(Ok(to_proto(e))).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = woken.changed() => {}
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
                () = state.cancel.cancelled() => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
