//! `shoal dht`: run a standalone DHT node, or do one `get_peers` lookup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use client::dht::{Dht, DhtConfig, LookupEvent, DEFAULT_BOOTSTRAP};
use tokio::signal::unix::{signal, SignalKind};
use torrent_format::{InfoHash, Magnet};

const EXAMPLES: &str = "\
Examples:
  shoal dht                                   run a node on UDP 6881, print its state
  shoal dht --listen 10.0.0.1:6881 --dht-bootstrap none
                                              a bootstrap node for a private network
  shoal dht --listen 0.0.0.0:6881 --listen [::]:6881
                                              an IPv4 and an IPv6 node (BEP 32)
  shoal dht get-peers 'magnet:?xt=urn:btih:…' who has this torrent?
  shoal dht get-peers 0123456789abcdef0123456789abcdef01234567 --dht-bootstrap 10.0.0.1:6881

The routing table is kept in $XDG_STATE_HOME/shoal/dht.dat (default
~/.local/state/shoal/dht.dat; the IPv6 node's in dht6.dat beside it), so a
restart does not bootstrap from scratch.
Exit status of get-peers: 0 when peers were found (with --announce: when
the announce reached a node), 1 otherwise.";

/// Run a DHT node (BEP 5), or look up the peers of one torrent
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// UDP address to serve on; once more with an address of the other
    /// family for a dual-stack node (BEP 32), e.g. --listen 0.0.0.0:6881
    /// --listen [::]:6881 [default: 0.0.0.0:6881; get-peers: any free port]
    #[arg(long, value_name = "ADDR", global = true, value_parser = super::parse_listen)]
    listen: Vec<SocketAddr>,
    /// A node to join the DHT through (HOST:PORT, repeatable); 'none' for
    /// no bootstrap node [default: the public routers libtorrent and
    /// Transmission use]
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", global = true)]
    bootstrap: Vec<String>,
    /// Where the routing table is kept [default: $XDG_STATE_HOME/shoal/dht.dat]
    #[arg(long, value_name = "FILE", global = true)]
    state: Option<PathBuf>,
    /// Neither load nor save the routing table
    #[arg(long, global = true)]
    no_state: bool,
    /// -q (for every command): print nothing but errors (and get-peers'
    /// peers)
    #[arg(from_global)]
    quiet: bool,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Look up the peers of one torrent and print them, one per line
    GetPeers {
        /// The info hash (40 hex or 32 base32 characters) or a magnet link
        hash: String,
        /// Give up after this long
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Also announce that a peer of this torrent listens on PORT (TCP)
        /// at this host, to the nodes closest to the hash
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        announce: Option<u16>,
    },
}

fn parse_hash(s: &str) -> anyhow::Result<InfoHash> {
    if s.starts_with("magnet:") {
        return Ok(Magnet::parse(s)
            .with_context(|| "not a usable magnet link".to_string())?
            .info_hash);
    }
    InfoHash::from_hex_or_base32(s).with_context(|| {
        format!("{s:?} is not an info hash (40 hex or 32 base32 characters) or a magnet link")
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let get = match &args.command {
        Some(Sub::GetPeers {
            hash,
            timeout,
            announce,
        }) => Some((parse_hash(hash)?, *timeout, *announce)),
        None => None,
    };
    let bootstrap: Vec<String> = if args.bootstrap.is_empty() {
        DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect()
    } else {
        args.bootstrap
            .iter()
            .filter(|b| b.as_str() != "none")
            .cloned()
            .collect()
    };
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        let port = if get.is_some() { 0 } else { 6881 };
        listen.push(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if listen.len() > 2 || (listen.len() == 2 && listen[0].is_ipv4() == listen[1].is_ipv4()) {
        bail!("--listen: give one IPv4 address, one IPv6 address, or one of each");
    }
    let state_file = if args.no_state {
        None
    } else {
        args.state
            .clone()
            .or_else(|| client::dht::state_dir().map(|d| d.join("dht.dat")))
    };
    let config = DhtConfig {
        bind: listen,
        bootstrap,
        state_file,
        enforce_node_id: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = Dht::start(config).await?;
        let code = match get {
            Some((hash, timeout, announce)) => {
                get_peers(&node, hash, timeout, announce, args.quiet).await?
            }
            None => serve(&node, args.quiet).await?,
        };
        node.shutdown().await;
        Ok(code)
    })
}

async fn get_peers(
    node: &Dht,
    hash: InfoHash,
    timeout: Duration,
    announce: Option<u16>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    let announce = announce.map(|port| client::dht::Announce {
        port,
        implied_port: false,
    });
    let mut events = node.get_peers(hash.0, announce).await;
    let mut announced = 0;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut found = 0usize;
    let mut lookups = 1;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(LookupEvent::Peers(peers)) => {
                    for p in peers {
                        println!("{p}");
                        found += 1;
                    }
                }
                done => {
                    let answered = match done {
                        Some(LookupEvent::Done { answered, announced: n, .. }) => {
                            announced += n;
                            answered
                        }
                        _ => 0,
                    };
                    let status = node.status().await;
                    // A first lookup from an empty table mostly fills it;
                    // one more from what it learned, if none were found.
                    let again = if announce.is_some() { announced == 0 } else { found == 0 };
                    if again && lookups < 3 && status.nodes > 0 && answered < 8 {
                        lookups += 1;
                        events = node.get_peers(hash.0, announce).await;
                        continue;
                    }
                    if let Some(a) = announce {
                        if !quiet {
                            eprintln!("shoal: dht: announced port {} to {}", a.port, crate::ui::count(announced, "node"));
                        }
                        if announced > 0 {
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    if !quiet && (found > 0 || status.nodes > 0) {
                        eprintln!(
                            "shoal: dht: {} for {hash}; {} answered the lookup, {} in the routing table",
                            crate::ui::count(found, "peer"),
                            crate::ui::count(answered, "node"),
                            status.nodes
                        );
                    }
                    break;
                }
            },
            _ = &mut deadline => {
                if !quiet {
                    eprintln!("shoal: dht: gave up after {}", humantime::format_duration(timeout));
                }
                break;
            }
            // Interrupted: what was found is printed; the status says so.
            _ = sigint.recv() => return Ok(ExitCode::from(130)),
        }
    }
    if found == 0 {
        let status = node.status().await;
        if status.nodes == 0 {
            eprintln!(
                "shoal: error: no DHT node answered (bootstrap nodes unreachable?); give one with --dht-bootstrap HOST:PORT"
            );
        } else if !quiet {
            eprintln!("shoal: dht: no peers found for {hash}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(node: &Dht, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a signal handler")?;
    let status = node.status().await;
    if !quiet {
        let addrs: Vec<String> = node.local_addrs().iter().map(|a| a.to_string()).collect();
        eprintln!(
            "shoal: dht: node {} on UDP {}",
            status.id,
            addrs.join(" and ")
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !quiet {
                    let s = node.status().await;
                    eprintln!(
                        "shoal: dht: {} nodes{} in {} buckets; {} peers stored; in {} datagrams ({}), out {} ({}); {} rate-limited",
                        s.nodes,
                        if node.local_addrs().len() > 1 { format!(" ({} IPv6)", s.nodes6) } else { String::new() },
                        s.buckets,
                        s.stored_peers,
                        s.stats.datagrams_in,
                        crate::ui::short_size(s.stats.bytes_in),
                        s.stats.datagrams_out,
                        crate::ui::short_size(s.stats.bytes_out),
                        s.stats.rate_limited,
                    );
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
