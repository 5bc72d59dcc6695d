//! Task events to containerd (`/tasks/create`, `start`, `oom`, `exit`, `delete`) that
//! survive a containerd restart.
//!
//! containerd-shim's `RemotePublisher` holds one ttrpc connection; when containerd
//! restarts, every later publish fails (EPIPE) and, in containerd-shim-wasm, the event is
//! dropped: a container that exits after the restart never reports its exit. Here events
//! go through a queue to one thread that publishes them in order, and on failure
//! reconnects and retries the same event until containerd is back.
//!
//! The connection is dropped after [`IDLE_DISCONNECT`] without events and made again for the
//! next one: ttrpc's sync client keeps two threads per connection, one of which wakes every
//! 10 ms (its `poll` timeout), so a connection held by an idle shim costs 100 wakeups a
//! second and keeps the code they run resident.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

type Queued = (String, Box<dyn MessageDyn>);

/// Sends events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Queued>,
    pending: Arc<(Mutex<usize>, Condvar)>,
}

/// Something that can publish one event (containerd, or a test double).
pub trait Publish: Send + 'static {
    /// Publishes, connecting first when not connected.
    fn publish(&mut self, topic: &str, event: Box<dyn MessageDyn>) -> Result<(), String>;
    /// Reconnects after a failure.
    fn reconnect(&mut self) -> Result<(), String>;
    /// Drops the connection while there is nothing to send.
    fn disconnect(&mut self);
}

/// containerd's ttrpc event service at `address`.
pub struct Containerd {
    address: String,
    namespace: String,
    publisher: Option<RemotePublisher>,
}

impl Containerd {
    pub fn new(address: &str, namespace: &str, publisher: RemotePublisher) -> Self {
        Self {
            address: address.to_string(),
            namespace: namespace.to_string(),
            publisher: Some(publisher),
        }
    }
}

impl Publish for Containerd {
    fn publish(&mut self, topic: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        if self.publisher.is_none() {
            self.reconnect()?;
        }
        let publisher = self.publisher.as_ref().ok_or("not connected")?;
        publisher
            .publish(Default::default(), topic, &self.namespace, event)
            .map_err(|e| e.to_string())
    }

    fn reconnect(&mut self) -> Result<(), String> {
        self.publisher = None;
        self.publisher = Some(RemotePublisher::new(&self.address).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.publisher = None;
    }
}

/// How long the connection to containerd outlives the last event: long enough that the
/// events of one container's create, start and a quick exit share it (they come within
/// milliseconds), and shorter than the wait before the shim drops its code pages
/// ([`crate::trim::IDLE_AFTER`]), so the teardown's code is not paged in again after it.
pub const IDLE_DISCONNECT: Duration = Duration::from_millis(250);

/// Retry pacing while containerd is away.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Events {
    pub fn start(publisher: impl Publish) -> Self {
        Self::start_with_idle(publisher, IDLE_DISCONNECT)
    }

    /// [`Events::start`] with another idle time before disconnecting.
    pub fn start_with_idle(publisher: impl Publish, idle: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
        let counter = pending.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || deliver(publisher, rx, &counter, idle))
            .expect("spawning the event thread");
        Self { tx, pending }
    }

    pub fn send(&self, event: impl Event) {
        let topic = event.topic();
        *self.pending.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if self.tx.send((topic, Box::new(event))).is_err() {
            self.done();
        }
    }

    fn done(&self) {
        done(&self.pending);
    }

    /// Waits until every event sent so far is delivered, or `timeout` passed; true when
    /// delivered. The shim calls it before exiting so a task's last events are not lost.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (count, cv) = &*self.pending;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *guard == 0
    }
}

fn done(pending: &(Mutex<usize>, Condvar)) {
    let mut n = pending.0.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_sub(1);
    pending.1.notify_all();
}

/// The next event; the connection is dropped while waiting longer than `idle`.
fn next(rx: &Receiver<Queued>, publisher: &mut impl Publish, idle: Duration) -> Option<Queued> {
    match rx.recv_timeout(idle) {
        Ok(q) => Some(q),
        Err(RecvTimeoutError::Timeout) => {
            publisher.disconnect();
            rx.recv().ok()
        }
        Err(RecvTimeoutError::Disconnected) => None,
    }
}

fn deliver(
    mut publisher: impl Publish,
    rx: Receiver<Queued>,
    pending: &(Mutex<usize>, Condvar),
    idle: Duration,
) {
    while let Some((topic, event)) = next(&rx, &mut publisher, idle) {
        let mut wait = RETRY_FIRST;
        let mut event = Some(event);
        let mut failures = 0u32;
        while let Some(e) = event.take() {
            // publishing consumes the event; keep it for a retry
            let attempt = e.clone_box();
            match publisher.publish(&topic, attempt) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(topic, failures, "event delivered after reconnecting");
                    }
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(
                            topic,
                            error,
                            "publishing failed; reconnecting to containerd"
                        );
                    }
                    failures += 1;
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(RETRY_MAX);
                    if let Err(error) = publisher.reconnect() {
                        tracing::debug!(error, "containerd not back yet");
                    }
                    event = Some(e);
                }
            }
        }
        done(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::{TaskExit, TaskStart};

    /// Fails `fail` times after the first success, as a restarted containerd would.
    #[derive(Default)]
    struct Flaky {
        fail_from: usize,
        fail: usize,
        reconnects: Arc<Mutex<usize>>,
        got: Arc<Mutex<Vec<String>>>,
        /// what happened to the connection: "publish", "disconnect"
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Publish for Flaky {
        fn publish(&mut self, topic: &str, _: Box<dyn MessageDyn>) -> Result<(), String> {
            let mut got = self.got.lock().unwrap();
            if got.len() >= self.fail_from && self.fail > 0 {
                self.fail -= 1;
                return Err("broken pipe".into());
            }
            got.push(topic.to_string());
            self.log.lock().unwrap().push("publish");
            Ok(())
        }
        fn reconnect(&mut self) -> Result<(), String> {
            *self.reconnects.lock().unwrap() += 1;
            Ok(())
        }
        fn disconnect(&mut self) {
            self.log.lock().unwrap().push("disconnect");
        }
    }

    #[test]
    fn events_arrive_in_order_across_a_broken_connection() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(Mutex::new(0));
        let events = Events::start(Flaky {
            fail_from: 1,
            fail: 3,
            reconnects: reconnects.clone(),
            got: got.clone(),
            ..Flaky::default()
        });
        events.send(TaskStart::default());
        events.send(TaskExit::default());
        events.send(TaskStart::default());
        assert!(events.flush(Duration::from_secs(10)));
        assert_eq!(
            *got.lock().unwrap(),
            vec!["/tasks/start", "/tasks/exit", "/tasks/start"]
        );
        assert_eq!(*reconnects.lock().unwrap(), 3);
    }

    #[test]
    fn flush_gives_up_while_containerd_is_away() {
        let events = Events::start(Flaky {
            fail_from: 0,
            fail: usize::MAX,
            ..Flaky::default()
        });
        events.send(TaskExit::default());
        assert!(!events.flush(Duration::from_millis(200)));
    }

    #[test]
    fn the_connection_is_dropped_while_idle_and_made_again_for_the_next_event() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let events = Events::start_with_idle(
            Flaky {
                log: log.clone(),
                ..Flaky::default()
            },
            Duration::from_millis(50),
        );
        events.send(TaskStart::default());
        events.send(TaskExit::default());
        assert!(events.flush(Duration::from_secs(10)));
        // a burst shares the connection
        assert_eq!(*log.lock().unwrap(), ["publish", "publish"]);
        let idle_since = std::time::Instant::now();
        while log.lock().unwrap().len() < 3 {
            assert!(
                idle_since.elapsed() < Duration::from_secs(10),
                "never disconnected"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        events.send(TaskExit::default());
        assert!(events.flush(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(200));
        // one disconnect per idle spell, not one per timeout
        assert_eq!(
            *log.lock().unwrap(),
            ["publish", "publish", "disconnect", "publish", "disconnect"]
        );
    }
}
