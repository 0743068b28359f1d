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
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::{bail, Context};
use torrent_format::metainfo::MAX_TORRENT_SIZE;
use torrent_format::Metainfo;

/// A command line that cannot work, found after parsing (an `--only`
/// index past the torrent's files, flags that do not go together): exit
/// status 2, as for clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns early with a [`Usage`] error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cmd::Usage(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// Reads and validates a .torrent file, reading no more than the size limit.
pub fn load_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(what) = not_a_path(path) {
                bail!("{what}");
            }
            return Err(e).with_context(|| format!("cannot open {}", path.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
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
    Metainfo::from_bytes(&bytes).map_err(|e| match not_bencode(&bytes) {
        Some(what) => anyhow::anyhow!("{}: {what}", path.display()),
        None => anyhow::Error::new(e).context(format!("{} is not a valid torrent", path.display())),
    })
}

/// A command-line argument that is no file and was not meant as one: a
/// magnet link or a URL, said so (instead of "No such file or directory").
fn not_a_path(path: &Path) -> Option<String> {
    let arg = path.to_str()?;
    let scheme = arg.split_once(':').map(|(s, _)| s.to_ascii_lowercase())?;
    // Links can be long: the start says which one.
    let shown = match arg.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &arg[..i]),
        None => arg.to_string(),
    };
    match scheme.as_str() {
        "magnet" => Some(format!(
            "{shown} is a magnet link, and this command needs the .torrent file \
             (a magnet has no piece hashes); fetch it with: \
             shoal download 'MAGNET' --metadata-only --save-torrent FILE"
        )),
        "http" | "https" | "ftp" => Some(format!(
            "{shown} is a URL, and shoal reads .torrent files from disk: \
             download it first (e.g. curl -fLo FILE.torrent 'URL')"
        )),
        _ => None,
    }
}

/// Why bytes that are not bencode are not a torrent, when it is plain to
/// see: an empty file, a web page (a login or error page saved as
/// .torrent), a magnet link saved in a file.
fn not_bencode(bytes: &[u8]) -> Option<&'static str> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Some("the file is empty, not a .torrent");
    };
    let head: Vec<u8> = text[start..text.len().min(start + 512)].to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if head.starts_with(b"<")
        && (has(b"<html") || has(b"<!doctype") || has(b"<head") || has(b"<body"))
    {
        return Some(
            "this looks like a web page (HTML), not a .torrent (saved from a login or error page?)",
        );
    }
    if head.starts_with(b"magnet:") {
        return Some("this holds a magnet link, not a .torrent; give the link itself, quoted");
    }
    None
}

/// A `--listen` address: IP:PORT, or HOST:PORT resolved now (the first
/// IPv4 address, else the first), or a bare PORT (all IPv4 addresses).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(
            "give IP:PORT, e.g. 0.0.0.0:6969 or [::]:6969 (or a host name with a port)".to_string(),
        );
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("'{port}' is not a port number (0 to 65535)"));
    }
    let addrs: Vec<SocketAddr> = match s.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => {
            return Err(format!(
            "cannot resolve '{host}'; give an IP address, e.g. 127.0.0.1:{port} or 0.0.0.0:{port}"
        ))
        }
    };
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{host}' has no address; give an IP address, e.g. 0.0.0.0:{port}"))
}
