pub mod create;
pub mod demo;
pub mod dht;
pub mod download;
pub mod magnet;
pub mod seed;
pub mod show;
pub mod swarm;
pub mod tracker;
pub mod verify;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use torrent_format::metainfo::MAX_TORRENT_SIZE;
use torrent_format::Metainfo;

/// Reads and validates a .torrent file, reading no more than the size limit.
pub fn load_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TORRENT_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > MAX_TORRENT_SIZE {
        bail!(
            "{} is not a torrent: larger than the {} MiB limit",
            path.display(),
            MAX_TORRENT_SIZE >> 20
        );
    }
    Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid torrent", path.display()))
}
