//! The swarm client engine behind `shoal download` and `shoal seed`.
//!
//! So far: [`wire`], the sans-IO peer wire codec (handshake, messages,
//! bitfields), and [`picker`], which blocks to request from whom (started
//! pieces first, rarest first with random ties, endgame). The choker,
//! storage and tracker client follow (see ARCHITECTURE.md).

pub mod choker;
pub mod disk;
pub mod peer;
pub mod picker;
pub mod rate;
pub mod resume;
pub mod session;
pub mod storage;
pub mod tracker;
pub mod wire;
