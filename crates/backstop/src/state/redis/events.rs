//! The events subscribers: a dedicated pub/sub connection per store that turns
//! other instances' changes into reloads for that store's writer.
//!
//! [`listen`] is the loop both stores share (subscribe, reconnect with backoff,
//! skip this instance's own messages); [`subscribe`] is the breaker store's
//! (`<prefix>events`, messages `<instance> <scope>` or `<instance> *`).

use super::{Op, RedisOptions, Shared};
use crate::state::Scope;
use futures_util::StreamExt;
use redis::RedisError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What a subscriber hears.
pub(super) enum Heard<'a> {
    /// (Re)subscribed: messages may have been missed meanwhile.
    Subscribed,
    /// Another instance's message (its body, after `<instance> `).
    Message(&'a str),
}

/// Where a subscriber reports its state.
pub(super) struct Listener<'a> {
    pub(super) client: redis::Client,
    pub(super) channel: String,
    /// Messages from this instance are skipped.
    pub(super) instance: &'a str,
    pub(super) options: &'a RedisOptions,
    pub(super) subscribed: &'a AtomicBool,
    pub(super) changed: &'a Notify,
}

/// Follow `channel` until `stop`, calling `on` for each (re)subscription and each
/// other instance's message; reconnect with a doubling delay up to the retry interval.
pub(super) async fn listen(
    l: Listener<'_>,
    stop: CancellationToken,
    mut on: impl FnMut(Heard<'_>),
) {
    let mut delay = Duration::from_millis(50);
    loop {
        let connect = async {
            let mut pubsub = l.client.get_async_pubsub().await?;
            pubsub.subscribe(&l.channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(l.options.command_timeout, connect) => r,
        };
        if let Ok(Ok(mut pubsub)) = attempt {
            delay = Duration::from_millis(50);
            l.subscribed.store(true, Ordering::Release);
            l.changed.notify_waiters();
            on(Heard::Subscribed);
            let mut messages = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                match payload.split_once(' ') {
                    Some((from, body)) if from != l.instance => on(Heard::Message(body)),
                    _ => {}
                }
            }
            l.subscribed.store(false, Ordering::Release);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(l.options.retry_interval);
    }
}

/// Listen to `<prefix>events` and ask the breaker writer to reload what other
/// instances changed; after every (re)subscription, a full resync.
pub(super) async fn subscribe(
    shared: Arc<Shared>,
    client: redis::Client,
    tx: mpsc::Sender<Op>,
    stop: CancellationToken,
) {
    let listener = Listener {
        client,
        channel: shared.keys.events(),
        instance: &shared.instance,
        options: &shared.options,
        subscribed: &shared.subscribed,
        changed: &shared.changed,
    };
    listen(listener, stop, |heard| {
        let refresh = match heard {
            Heard::Subscribed => Some(None),
            Heard::Message("*") => Some(None),
            Heard::Message(body) => body.parse::<Scope>().ok().map(Some),
        };
        if let Some(scope) = refresh {
            // Full: the periodic resync heals it.
            let _ = tx.try_send(Op::Refresh(scope));
        }
    })
    .await;
}
