//! The swarm client behind `shoal download` and `shoal seed`.
//!
//! - [`engine`]: many torrents behind one listening port (peer id, global
//!   connection cap and rate limits, the disk threads).
//! - [`session`]: one torrent — its state, driver and announcer.
//! - [`protocol`]: one connection's protocol state machine (BEP 3, 6, 10),
//!   no I/O; [`peer`] is its transport.
//! - [`wire`] (codec), [`extension`] (BEP 10 handshake), [`fast`] (BEP 6
//!   allowed-fast set), [`pex`] (BEP 11 peer exchange),
//!   [`picker`], [`choker`], [`initial`] (BEP 16), [`pace`] (how far
//!   ahead each peer is asked),
//!   [`smartban`], [`rate`], [`disk`], [`storage`], [`resume`],
//!   [`tracker`] (the tracker client).
//!
//! See ARCHITECTURE.md for how they fit.

pub mod check;
pub mod choker;
pub mod dht;
pub mod disk;
pub(crate) mod droplog;
pub mod engine;
pub mod extension;
pub mod fast;
pub mod fetch;
pub(crate) mod initial;
pub mod metadata;
pub mod pace;
pub mod peer;
pub mod pex;
pub mod picker;
pub(crate) mod protocol;
pub mod rate;
pub mod resume;
pub mod session;
pub mod smartban;
pub mod spread;
pub mod storage;
pub mod tracker;
pub mod wire;

pub use engine::{Engine, EngineConfig};
pub use session::{Config, Session};
