//! The peer hub: a mio TCP JoinMarket directory node ([`Hub`]) that routes
//! PUBMSG and PRIVMSG between handshaked peers, answers GETPEERLIST, keeps
//! them alive with the heartbeat and bounds what any one of them can cost;
//! and its pieces: the wire format ([`wire`]), the heartbeat's decisions
//! ([`sweep`]), the per-peer [`Limits`] and the registry of handshaked peers.

mod client;
mod io;
mod limits;
pub(crate) mod lines;
mod output;
mod registry;
mod server;
mod status;
pub mod sweep;
pub mod wire;

pub use client::{ClientEvent, PeerClient, PeerClientConfig};
pub use limits::Limits;
pub use registry::{CounterSnapshot, PeerInfo, PeerStatus};
pub use server::{DEFAULT_MOTD, DEFAULT_PORT, Hub, HubConfig, HubEvent};
pub use status::StatusServer;
pub use sweep::{EvictReason, SweepConfig};
