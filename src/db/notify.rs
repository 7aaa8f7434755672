//! One LISTEN connection per replica, fanned out in process: `Notifier` keeps a dedicated
//! `tokio_postgres` session (outside the pool) LISTENing on a fixed set of channels and wakes the
//! subscribers of each (channel, payload) pair — e.g. the followers of one task's log — so ten
//! thousand waiting streams cost one connection and no polling.
//!
//! Guarantees: a subscriber is woken at least once after every notification sent on its pair
//! after it subscribed (wake-ups coalesce: one wake may stand for several notifications). While
//! the session is down notifications are lost, so every (re)connection wakes every subscriber once
//! LISTEN is in place: whatever happened meanwhile is read again. The session reconnects with
//! exponential back-off (100 ms … 5 s) until the stop token is cancelled.
//! Not guaranteed: delivery while disconnected (hence the wake-all), or ordering between pairs.
//!
//! Channels whose payloads matter themselves (the WebSocket events of `tq_ws`) are also read as a
//! stream with `messages`: every notification of the channel, in order, to every receiver (a
//! receiver more than `MESSAGE_BUFFER` behind loses the oldest and is told how many), and a
//! `Message::Reconnected` after each new LISTEN (what was sent meanwhile is lost).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{broadcast, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics as m;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Notifications a `messages` receiver may lag behind before it loses the oldest.
pub const MESSAGE_BUFFER: usize = 4096;

/// One notification of a channel read with `Notifier::messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Payload(Arc<str>),
    /// LISTEN is (again) in place: notifications sent while it was not are lost.
    Reconnected,
}

/// The replica's LISTEN session and its subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// channel → payload → wake counter. An entry lives while it has subscribers.
    topics: Mutex<HashMap<&'static str, HashMap<String, watch::Sender<u64>>>>,
    /// channel → every payload, for `messages` receivers (sent only while one exists).
    streams: HashMap<&'static str, broadcast::Sender<Message>>,
    listening: AtomicBool,
}

impl Inner {
    fn new(channels: &[&'static str]) -> Inner {
        Inner {
            topics: Mutex::new(channels.iter().map(|c| (*c, HashMap::new())).collect()),
            streams: channels
                .iter()
                .map(|c| (*c, broadcast::channel(MESSAGE_BUFFER).0))
                .collect(),
            listening: AtomicBool::new(false),
        }
    }

    fn wake(&self, channel: &str, payload: &str) {
        if let Some(stream) = self.streams.get(channel)
            && stream.receiver_count() > 0
        {
            let _ = stream.send(Message::Payload(payload.into()));
        }
        let topics = self.topics.lock().expect("notifier lock");
        if let Some(sender) = topics.get(channel).and_then(|t| t.get(payload)) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        for stream in self.streams.values() {
            let _ = stream.send(Message::Reconnected);
        }
        let topics = self.topics.lock().expect("notifier lock");
        for sender in topics.values().flat_map(HashMap::values) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Notifier {
    /// Starts the LISTEN session on `channels` (plain lowercase identifiers) with `pg`, until
    /// `stop` is cancelled.
    pub fn start(
        pg: tokio_postgres::Config,
        channels: &[&'static str],
        stop: CancellationToken,
    ) -> Notifier {
        for c in channels {
            assert!(
                !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "channel names are plain identifiers"
            );
        }
        let inner = Arc::new(Inner::new(channels));
        let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        tokio::spawn(run(inner.clone(), pg, listen, stop));
        Notifier { inner }
    }

    /// Subscribes to notifications of `channel` whose payload is `payload`. Subscribe before
    /// reading the state the notifications announce changes of, so no change falls in between.
    pub fn subscribe(&self, channel: &'static str, payload: impl Into<String>) -> Subscription {
        let payload = payload.into();
        let mut topics = self.inner.topics.lock().expect("notifier lock");
        let senders = topics
            .get_mut(channel)
            .unwrap_or_else(|| panic!("the notifier does not listen on {channel}"));
        let rx = senders
            .entry(payload.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            inner: self.inner.clone(),
            channel,
            payload,
            rx,
        }
    }

    /// Every notification of `channel` from now on, in order (see the module doc).
    pub fn messages(&self, channel: &'static str) -> broadcast::Receiver<Message> {
        self.inner
            .streams
            .get(channel)
            .unwrap_or_else(|| panic!("the notifier does not listen on {channel}"))
            .subscribe()
    }

    /// Whether the LISTEN session is up: while it is not, subscribers should poll more often.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }
}

/// Wake-ups for one (channel, payload). Dropping it unsubscribes.
pub struct Subscription {
    inner: Arc<Inner>,
    channel: &'static str,
    payload: String,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Marks every wake-up so far as seen: call it just before reading the watched state.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits for a wake-up not yet marked seen (returns at once if one came since `mark_seen`).
    pub async fn woken(&mut self) {
        // The sender lives as long as any subscription of its pair, so this cannot fail.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.inner.topics.lock().expect("notifier lock");
        if let Some(senders) = topics.get_mut(self.channel)
            && let Some(sender) = senders.get(&self.payload)
            // Our own receiver is still alive here: it is the last one.
            && sender.receiver_count() <= 1
        {
            senders.remove(&self.payload);
        }
    }
}

/// Keeps a LISTEN session up until `stop`, reconnecting with back-off.
async fn run(
    inner: Arc<Inner>,
    pg: tokio_postgres::Config,
    listen: String,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let outcome = session(&inner, &pg, &listen, &stop).await;
        inner.listening.store(false, Ordering::Relaxed);
        metrics::gauge!(m::NOTIFY_LISTENING).set(0.0);
        match outcome {
            Ok(()) => return,
            Err((e, was_listening)) => {
                if was_listening {
                    backoff = MIN_BACKOFF;
                }
                metrics::counter!(m::NOTIFY_RECONNECTS).increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "log notification session lost; reconnecting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session: connect, LISTEN, then dispatch notifications until the connection fails (Err,
/// with whether LISTEN had succeeded) or `stop` (Ok).
async fn session(
    inner: &Inner,
    pg: &tokio_postgres::Config,
    listen: &str,
    stop: &CancellationToken,
) -> Result<(), (String, bool)> {
    let connect = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = pg.connect(tokio_postgres::NoTls) => c,
    };
    let (client, mut connection) = connect.map_err(|e| (describe(&e), false))?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let subscribe = client.batch_execute(listen);
    tokio::pin!(subscribe);
    let mut listening = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = &mut subscribe, if !listening => {
                r.map_err(|e| (describe(&e), false))?;
                listening = true;
                inner.listening.store(true, Ordering::Relaxed);
                metrics::gauge!(m::NOTIFY_LISTENING).set(1.0);
                tracing::debug!("listening for log notifications");
                // Anything may have happened while we were not listening: everyone reads again.
                inner.wake_all();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => inner.wake(n.channel(), n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err((describe(&e), listening)),
                None => return Err(("connection closed".to_string(), listening)),
            },
        }
    }
}

/// A Postgres error with the server's message, not just "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier() -> Notifier {
        Notifier {
            inner: Arc::new(Inner::new(&["task_log"])),
        }
    }

    #[tokio::test]
    async fn wakes_only_its_pair_and_cleans_up() {
        let n = notifier();
        let mut a = n.subscribe("task_log", "1");
        let mut a2 = n.subscribe("task_log", "1");
        let mut b = n.subscribe("task_log", "2");
        a.mark_seen();
        b.mark_seen();
        n.inner.wake("task_log", "1");
        n.inner.wake("task_log", "1");
        tokio::time::timeout(Duration::from_secs(1), a.woken())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), a2.woken())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.woken())
                .await
                .is_err()
        );
        n.inner.wake_all();
        tokio::time::timeout(Duration::from_secs(1), b.woken())
            .await
            .unwrap();
        drop(a);
        assert_eq!(n.inner.topics.lock().unwrap()["task_log"].len(), 2);
        drop(a2);
        drop(b);
        assert!(n.inner.topics.lock().unwrap()["task_log"].is_empty());
    }

    #[tokio::test]
    async fn messages_carry_every_payload_in_order() {
        let n = notifier();
        n.inner.wake("task_log", "nobody listens yet");
        let mut rx = n.messages("task_log");
        n.inner.wake("task_log", "a");
        n.inner.wake("task_log", "b");
        n.inner.wake_all();
        assert_eq!(rx.recv().await.unwrap(), Message::Payload("a".into()));
        assert_eq!(rx.recv().await.unwrap(), Message::Payload("b".into()));
        assert_eq!(rx.recv().await.unwrap(), Message::Reconnected);
        assert!(rx.try_recv().is_err());
    }
}
