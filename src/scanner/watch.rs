//! Live presence: a thread that scans on a fixed grid and reports changes.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Scan, ScanEntry, ScanStatus, Scanner};
use crate::error::{Error, Result};
use crate::ticker::Ticker;

/// A change a [`Watch`] saw between two scans.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanEvent {
    /// A heartbeat file that was not there at the previous scan (every file
    /// is new to the first scan).
    Appeared(ScanEntry),
    /// A file's status changed.
    Changed {
        /// Its status at the previous scan.
        from: ScanStatus,
        /// The file now.
        entry: ScanEntry,
    },
    /// A file that is gone (or can no longer be judged), as last seen. A
    /// directory that was removed is empty: all its files disappear.
    Disappeared(ScanEntry),
    /// The directory could not be scanned; the previous picture is kept and
    /// nothing is reported gone. Sent when a failure starts or its message
    /// changes, not again at every tick while it lasts.
    Failed(String),
}

/// A scanning thread, started by [`Scanner::watch`]. Stops when
/// [`stop`](Watch::stop)ped or dropped (which joins the thread).
///
/// Events go to an unbounded channel, so a slow reader never stalls the
/// scans; each scan sends at most one event per file. A `Watch` nobody
/// reads from keeps every event: read them, or drop it.
#[must_use = "dropping a Watch stops it"]
pub struct Watch {
    events: Receiver<ScanEvent>,
    worker: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Watch {
    pub(super) fn start(scanner: Scanner) -> Result<Watch> {
        let (tx, events) = crossbeam_channel::unbounded();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let mut ticker = Ticker::new(scanner.clock().clone(), scanner.interval(), Duration::ZERO);
        let handle = thread::Builder::new().name("heartbeat-scanner".into()).spawn(move || {
            let mut picture = Picture::default();
            loop {
                if ticker.due() {
                    // A panic is a bug, but it must not end the watch silently.
                    let scan = crate::ticker::contained("scan", || scanner.scan()).unwrap_or_else(|| {
                        Err(Error::Io(io::Error::other("the scan panicked (a bug; see the log)")))
                    });
                    picture.update(scan, &tx);
                }
                if !ticker.wait(&stop_rx) {
                    break;
                }
            }
        })?;
        Ok(Watch { events, worker: Some((stop_tx, handle)) })
    }

    /// The events. Clone the receiver to read them from another thread.
    pub fn events(&self) -> &Receiver<ScanEvent> {
        &self.events
    }

    /// Stops the thread and waits for it; prompt even mid-interval. Idempotent.
    /// Events already sent stay readable.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            let _ = stop.try_send(());
            if handle.join().is_err() {
                log::error!("heartbeat scanner thread panicked");
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the previous successful scan saw.
#[derive(Default)]
struct Picture {
    entries: HashMap<PathBuf, ScanEntry>,
    failure: Option<String>,
}

impl Picture {
    /// Diffs a scan against the picture, sends the changes (appearances and
    /// changes in file-name order, then disappearances in file-name order),
    /// and keeps the scan as the new picture.
    fn update(&mut self, scan: crate::error::Result<Scan>, tx: &Sender<ScanEvent>) {
        let mut scan = match scan {
            Ok(scan) => scan,
            Err(e) => {
                let message = e.to_string();
                if self.failure.as_ref() != Some(&message) {
                    log::warn!("{message}");
                    let _ = tx.send(ScanEvent::Failed(message.clone()));
                    self.failure = Some(message);
                }
                return;
            }
        };
        self.failure = None;
        scan.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut next = HashMap::with_capacity(scan.entries.len());
        for entry in scan.entries {
            let event = match self.entries.remove(&entry.path) {
                None => Some(ScanEvent::Appeared(entry.clone())),
                Some(prev) if prev.status != entry.status => {
                    Some(ScanEvent::Changed { from: prev.status, entry: entry.clone() })
                }
                Some(_) => None,
            };
            if let Some(event) = event {
                let _ = tx.send(event);
            }
            next.insert(entry.path.clone(), entry);
        }
        let mut gone: Vec<ScanEntry> = std::mem::replace(&mut self.entries, next).into_values().collect();
        gone.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        for entry in gone {
            let _ = tx.send(ScanEvent::Disappeared(entry));
        }
    }
}
