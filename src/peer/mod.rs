//! The peer hub: a mio TCP JoinMarket directory node ([`Hub`]) that routes
//! PUBMSG and PRIVMSG between handshaked peers, answers GETPEERLIST, keeps
//! them alive with the heartbeat and bounds what any one of them can cost;
//! its client ([`PeerClient`]); and their pieces: the wire format ([`wire`]),
//! JMP-0005 nick authentication ([`auth`]), the heartbeat's decisions
//! ([`sweep`]), the per-peer [`Limits`] and the registry of handshaked peers.

pub mod auth;
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

pub use auth::{Identity, Mode as NickAuthMode};
pub use client::{ClientEvent, PeerClient, PeerClientBuilder, PeerClientConfig};
pub use limits::Limits;
pub use registry::{CounterSnapshot, PeerInfo, PeerStatus};
pub use server::{DEFAULT_MOTD, DEFAULT_PORT, Hub, HubBuilder, HubConfig, HubEvent};
pub use status::StatusServer;
pub use sweep::{EvictReason, SweepConfig};
