//! The tracker client against real trackers on loopback: shoal's own (in
//! process), and opentracker over HTTP and UDP (skipped with a printed
//! reason when it is not installed, unless SHOAL_REQUIRE_INTEROP=1). And
//! BEP 12 failover from a dead first tier to a live second one.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::tracker::{
    AnnounceParams, AnnounceResponse, Event, TrackerClient, TrackerConfig, TrackerError,
    TrackerList,
};
use tokio_util::sync::CancellationToken;
use torrent_format::InfoHash;
use tracker::server::{self, ServeOptions};
use tracker::{Config, MemoryStore, Tracker};

const SWARM: InfoHash = InfoHash([0x5a; 20]);
const OTHER: InfoHash = InfoHash([0xa5; 20]);

fn interop_required() -> bool {
    std::env::var("SHOAL_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// Is `program` here? If not: skip with a printed reason, or fail when
/// SHOAL_REQUIRE_INTEROP=1 (as tests/common/mod.rs at the root does).
fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !interop_required(),
            "{program} is not installed, and SHOAL_REQUIRE_INTEROP=1 requires it"
        );
        eprintln!("SKIP: {program} is not installed");
    }
    found
}

fn config() -> TrackerConfig {
    TrackerConfig {
        http_timeout: Duration::from_secs(10),
        udp_timeout: Duration::from_secs(1),
        udp_tries: 4,
        ..TrackerConfig::default()
    }
}

fn params(info_hash: InfoHash, id: u8, port: u16, left: u64, event: Event) -> AnnounceParams {
    let mut peer_id = *b"-SH0001-000000000000";
    peer_id[19] = id;
    AnnounceParams {
        info_hash,
        peer_id,
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: 50,
        key: u32::from(id),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn write_whitelist(dir: &Path, hashes: &[InfoHash]) -> std::path::PathBuf {
    let path = dir.join("whitelist");
    let text: String = hashes.iter().map(|h| format!("{}\n", h.to_hex())).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// shoal's tracker, serving in this process on 127.0.0.1:0.
struct ShoalTracker {
    addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl ShoalTracker {
    fn start(whitelist: &[InfoHash]) -> ShoalTracker {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            whitelist: Some(write_whitelist(dir.path(), whitelist)),
            ..Config::default()
        };
        let tracker = Arc::new(Tracker::new(config, Box::<MemoryStore>::default()).unwrap());
        let bound = server::bind(ServeOptions {
            listen: vec![local(0)],
            threads: 1,
            ..ServeOptions::default()
        })
        .unwrap();
        let addr = bound.local_addrs()[0];
        let stop = CancellationToken::new();
        let server = tokio::spawn(bound.run(tracker, stop.clone()));
        ShoalTracker {
            addr,
            stop,
            server,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    async fn shut_down(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("tracker shuts down")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_meet_through_the_shoal_tracker() {
    let t = ShoalTracker::start(&[SWARM]);
    let url = t.url();
    let c = TrackerClient::new(config()).unwrap();

    let mut leecher = params(SWARM, 1, 7001, 1000, Event::Started);
    let mut seed = params(SWARM, 2, 7002, 0, Event::Started);
    let r = c.announce(&url, &leecher).await.unwrap();
    assert!(r.peers.is_empty(), "{r:?}");
    assert_eq!(r.interval, Duration::from_secs(1800));
    let r = c.announce(&url, &seed).await.unwrap();
    assert_eq!(r.peers, [local(7001)]);
    assert_eq!((r.seeders, r.leechers), (Some(1), Some(1)));

    leecher.event = Event::None;
    let r = c.announce(&url, &leecher).await.unwrap();
    assert_eq!(r.peers, [local(7002)]);

    // Leaving removes the seed from the swarm.
    seed.event = Event::Stopped;
    c.announce(&url, &seed).await.unwrap();
    let r = c.announce(&url, &leecher).await.unwrap();
    assert!(r.peers.is_empty(), "{r:?}");
    assert_eq!((r.seeders, r.leechers), (Some(0), Some(1)));

    // A swarm off the whitelist: the tracker's failure reason comes through.
    let err = c
        .announce(&url, &params(OTHER, 3, 7003, 1, Event::Started))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TrackerError::Failure(reason) if !reason.is_empty()),
        "{err:?}"
    );
    t.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_tier_fails_over_to_the_second() {
    let t = ShoalTracker::start(&[SWARM]);
    // Ports that were just free: nothing listens there (TCP is refused,
    // UDP gets ICMP port unreachable).
    let dead_tcp = TcpListener::bind(local(0)).unwrap().local_addr().unwrap();
    let dead_udp = UdpSocket::bind(local(0)).unwrap().local_addr().unwrap();
    let dead = [
        format!("http://{dead_tcp}/announce"),
        format!("udp://{dead_udp}/announce"),
    ];
    let mut list = TrackerList::new(
        TrackerClient::new(config()).unwrap(),
        vec![dead.to_vec(), vec![t.url()]],
        &mut rand::rng(),
    );
    let tier1 = list.tiers()[0].clone();

    let (url, response) = list
        .announce(&params(SWARM, 1, 7001, 5, Event::Started))
        .await
        .unwrap();
    assert_eq!(url, t.url());
    assert!(response.peers.is_empty());
    assert_eq!(list.tiers()[0], tier1, "no dead tracker is promoted");

    // The second peer is routed the same way and finds the first.
    let (url, response) = list
        .announce(&params(SWARM, 2, 7002, 0, Event::Started))
        .await
        .unwrap();
    assert_eq!(url, t.url());
    assert_eq!(response.peers, [local(7001)]);
    t.shut_down().await;
}

/// opentracker on one free port for TCP and UDP, killed when dropped.
struct OpenTracker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 (opentracker takes both).
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(local(0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(local(port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

impl OpenTracker {
    /// Starts opentracker serving `whitelist` and waits until it answers
    /// an announce for it (it loads the whitelist in the background).
    async fn start(whitelist: &[InfoHash]) -> OpenTracker {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Run as root it chroots here and drops to `nobody`, who must be
        // able to read the list.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let list = write_whitelist(dir.path(), whitelist);
        std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_port().to_string();
        let child = Command::new("opentracker")
            .args(["-i", "127.0.0.1", "-p", &port, "-P", &port, "-d"])
            .arg(dir.path())
            .args(["-w", "whitelist"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start opentracker");
        let mut t = OpenTracker {
            child,
            port: port.parse().unwrap(),
            _dir: dir,
        };

        // Ready when a (stopped, so it leaves no trace) announce succeeds.
        let c = TrackerClient::new(config()).unwrap();
        let probe = params(whitelist[0], 0xff, 1, 0, Event::Stopped);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match c.announce(&t.http_url(), &probe).await {
                Ok(_) => return t,
                Err(e) if Instant::now() > deadline => panic!("opentracker not ready: {e}"),
                Err(_) => {
                    if let Some(status) = t.child.try_wait().unwrap() {
                        panic!("opentracker exited: {status}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }
}

/// opentracker may list the announcer itself; these are the others.
fn others(r: &AnnounceResponse, me: u16) -> Vec<SocketAddr> {
    let mut peers: Vec<_> = r
        .peers
        .iter()
        .copied()
        .filter(|p| *p != local(me))
        .collect();
    peers.sort();
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_meet_on_opentracker_over_http_and_udp() {
    if !have("opentracker") {
        return;
    }
    let started = Instant::now();
    let t = OpenTracker::start(&[SWARM]).await;
    let c = TrackerClient::new(config()).unwrap();
    let (http, udp) = (t.http_url(), t.udp_url());

    // Two peers over HTTP.
    let mut a = params(SWARM, 1, 7101, 1000, Event::Started);
    let mut b = params(SWARM, 2, 7102, 1000, Event::Started);
    c.announce(&http, &a).await.unwrap();
    let r = c.announce(&http, &b).await.unwrap();
    assert_eq!(others(&r, 7102), [local(7101)]);
    a.event = Event::None;
    let r = c.announce(&http, &a).await.unwrap();
    assert_eq!(others(&r, 7101), [local(7102)]);

    // Two more over UDP, same swarm: each sees everyone.
    let mut x = params(SWARM, 3, 7103, 0, Event::Started);
    let y = params(SWARM, 4, 7104, 0, Event::Started);
    let r = c.announce(&udp, &x).await.unwrap();
    assert_eq!(others(&r, 7103), [local(7101), local(7102)]);
    let r = c.announce(&udp, &y).await.unwrap();
    assert_eq!(others(&r, 7104), [local(7101), local(7102), local(7103)]);
    assert_eq!((r.seeders, r.leechers), (Some(2), Some(2)));
    x.event = Event::None;
    let r = c.announce(&udp, &x).await.unwrap();
    assert_eq!(others(&r, 7103), [local(7101), local(7102), local(7104)]);

    // Leaving over UDP shows over HTTP, and the other way round.
    x.event = Event::Stopped;
    c.announce(&udp, &x).await.unwrap();
    b.event = Event::Stopped;
    c.announce(&http, &b).await.unwrap();
    let r = c.announce(&http, &a).await.unwrap();
    assert_eq!(others(&r, 7101), [local(7104)]);
    let r = c.announce(&udp, &y).await.unwrap();
    assert_eq!(others(&r, 7104), [local(7101)]);

    // Not on its whitelist: its failure reason, over both protocols.
    let stranger = params(OTHER, 5, 7105, 1, Event::Started);
    for url in [&http, &udp] {
        let err = c.announce(url, &stranger).await.unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure(reason) if !reason.is_empty()),
            "{url}: {err:?}"
        );
    }
    eprintln!("opentracker test took {:?}", started.elapsed());
}
