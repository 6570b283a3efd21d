//! The peer hub: a mio TCP presence server speaking the JoinMarket
//! directory-node heartbeat ([`Hub`]), and its pieces: the wire format
//! ([`wire`]), the heartbeat's decisions ([`sweep`]) and the registry of
//! handshaked peers.

mod client;
mod lines;
mod registry;
mod server;
mod status;
pub mod sweep;
pub mod wire;

pub use client::{ClientEvent, PeerClient, PeerClientConfig};
pub use registry::{CounterSnapshot, PeerInfo, PeerStatus};
pub use server::{DEFAULT_PORT, Hub, HubConfig, HubEvent};
pub use status::StatusServer;
pub use sweep::{EvictReason, SweepConfig};
