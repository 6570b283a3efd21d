//! `HeartbeatClient`: a thread that beats one session, for in-process agents.

use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::Monitor;
use crate::error::{Error, Result};
use crate::ticker::Ticker;

/// The interval a [`HeartbeatClient`] beats at unless told otherwise.
pub const DEFAULT_CLIENT_INTERVAL: Duration = Duration::from_secs(10);

/// Beats one session of a [`Monitor`] every interval on a thread of its own,
/// from [`start`](Self::start) until [`stop`](Self::stop) or drop.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::{HeartbeatClient, Monitor};
///
/// let monitor = Monitor::builder().build()?;
/// monitor.register("agent-7", "crawler");
/// let client = HeartbeatClient::start(&monitor, "agent-7", Duration::from_secs(10))?;
/// assert!(monitor.status("agent-7").unwrap().is_healthy);
/// drop(client); // stops beating
/// # Ok::<(), heartbeat::Error>(())
/// ```
#[derive(Debug)]
pub struct HeartbeatClient {
    session_id: String,
    worker: Option<(Sender<()>, JoinHandle<()>)>,
}

impl HeartbeatClient {
    /// Starts beating `session_id` on `monitor`: once now, then every
    /// `interval` on the monitor's clock. A beat for a session the monitor
    /// does not know (unregistered, timed out) is logged and beating goes on.
    /// A zero `interval` is refused.
    pub fn start(monitor: &Monitor, session_id: impl Into<String>, interval: Duration) -> Result<Self> {
        if interval.is_zero() {
            return Err(Error::InvalidConfig("a heartbeat client's interval must be positive".into()));
        }
        let session_id = session_id.into();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (monitor, id) = (monitor.clone(), session_id.clone());
        let mut ticker = Ticker::new(monitor.clock().clone(), interval, Duration::ZERO);
        let handle = thread::Builder::new().name("heartbeat-client".into()).spawn(move || {
            loop {
                if ticker.due() && !monitor.beat(&id) {
                    log::debug!("heartbeat client: session {id} is not registered");
                }
                if !ticker.wait(&stop_rx) {
                    break;
                }
            }
        })?;
        Ok(HeartbeatClient { session_id, worker: Some((stop_tx, handle)) })
    }

    /// The session this client beats.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Stops beating and joins the thread; prompt and idempotent.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            let _ = stop.try_send(());
            if handle.join().is_err() {
                log::error!("heartbeat client thread panicked");
            }
        }
    }
}

impl Drop for HeartbeatClient {
    fn drop(&mut self) {
        self.stop();
    }
}
