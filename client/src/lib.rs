//! The swarm client engine behind `shoal download` and `shoal seed`.
//!
//! So far: [`wire`], the sans-IO peer wire codec (handshake, messages,
//! bitfields). The piece picker, choker, storage and tracker client follow
//! (see ARCHITECTURE.md).

pub mod wire;
