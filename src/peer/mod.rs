//! The peer hub: a mio TCP presence server speaking the JoinMarket
//! directory-node heartbeat ([`Hub`]), and its pieces: the wire format
//! ([`wire`]), the heartbeat's decisions ([`sweep`]) and the registry of
//! handshaked peers.

mod registry;
mod server;
pub mod sweep;
pub mod wire;

pub use registry::{CounterSnapshot, PeerInfo, PeerStatus};
pub use server::{DEFAULT_PORT, Hub, HubConfig, HubEvent};
pub use sweep::{EvictReason, SweepConfig};
