//! The events subscriber: a dedicated pub/sub connection on `<prefix>events` that
//! turns other instances' changes into refreshes for the writer.

use super::{Op, Shared};
use crate::state::Scope;
use futures_util::StreamExt;
use redis::RedisError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Listen to `<prefix>events` on a dedicated connection and ask the writer to reload
/// what other instances changed; after every (re)subscription, a full resync.
pub(super) async fn subscribe(
    shared: Arc<Shared>,
    client: redis::Client,
    tx: mpsc::Sender<Op>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    let channel = shared.keys.events();
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(shared.options.command_timeout, connect) => r,
        };
        if let Ok(Ok(mut pubsub)) = attempt {
            delay = Duration::from_millis(50);
            shared.subscribed.store(true, Ordering::Release);
            // Messages may have been missed while unsubscribed.
            let _ = tx.try_send(Op::Refresh(None));
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
                let Some((from, body)) = payload.split_once(' ') else {
                    continue;
                };
                if from == shared.instance {
                    continue;
                }
                let refresh = if body == "*" {
                    Some(None)
                } else {
                    body.parse::<Scope>().ok().map(Some)
                };
                if let Some(scope) = refresh {
                    // Full: the periodic resync heals it.
                    let _ = tx.try_send(Op::Refresh(scope));
                }
            }
            shared.subscribed.store(false, Ordering::Release);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(shared.options.retry_interval);
    }
}
