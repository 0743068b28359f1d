//! Everything about torrents that is not networking: strict bencode, validated
//! metainfo (.torrent files), info hashes, magnet links, torrent creation and
//! piece verification.
//!
//! Invariants (see ARCHITECTURE.md): no network, no async runtime; every
//! parser bounds lengths before allocating and never panics on input; a
//! [`Metainfo`] can only exist if its file paths are safe relative paths and
//! its piece table matches its total length.

pub mod bencode;
pub mod create;
mod infohash;
pub mod magnet;
pub mod metainfo;
pub mod pieces;
pub mod sha1_mb;

pub use infohash::{InfoHash, ParseInfoHashError};
pub use magnet::Magnet;
pub use metainfo::{FileEntry, Info, Metainfo, MetainfoError};
