//! The Redis swarm store against a real `redis-server` (started by each
//! test on a free loopback port, persistence off): the announce rules of
//! the in-memory store, one round trip per announce, expiry, two instances
//! sharing swarms, outages, and the server's HTTP and UDP paths over it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use torrent_format::InfoHash;
use tracker::redis_store::{Options, StoreError};
use tracker::request::Event;
use tracker::server::ServeOptions;
use tracker::swarm::{AnnounceOutcome, Announcer};
use tracker::{Config, RedisStore, Store, Tracker};

fn options() -> Options {
    Options {
        peer_timeout: 600,
        timeout: Duration::from_secs(2),
        max_swarm_peers: 1000,
    }
}

fn store(redis: &RedisServer, opts: Options) -> RedisStore {
    RedisStore::open(&redis.url(), opts).unwrap()
}

fn who(ip: &str, port: u16, seeder: bool, event: Event) -> Announcer {
    Announcer {
        ip: ip.parse().unwrap(),
        port,
        seeder,
        event,
    }
}

/// The compact peers of a reply as (address, port).
fn peers(o: &AnnounceOutcome) -> Vec<(IpAddr, u16)> {
    let width = if o.peers.v6 { 18 } else { 6 };
    o.peers
        .compact
        .chunks_exact(width)
        .map(|e| {
            let (ip, port) = e.split_at(width - 2);
            let ip = if o.peers.v6 {
                IpAddr::from(<[u8; 16]>::try_from(ip).unwrap())
            } else {
                IpAddr::from(<[u8; 4]>::try_from(ip).unwrap())
            };
            (ip, u16::from_be_bytes([port[0], port[1]]))
        })
        .collect()
}

fn v4(s: &str, port: u16) -> (IpAddr, u16) {
    (s.parse().unwrap(), port)
}

#[tokio::test]
async fn two_instances_share_swarms_under_the_memory_stores_rules() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Two stores: as two tracker instances on one Redis.
    let a = store(&redis, options());
    let b = store(&redis, options());
    let h = InfoHash([7; 20]);
    async fn ann(s: &RedisStore, w: Announcer, numwant: usize) -> AnnounceOutcome {
        s.announce(&InfoHash([7; 20]), w, numwant, true)
            .await
            .unwrap()
    }
    // A seed on A; a leecher on B hears of it.
    let o = ann(&a, who("10.0.0.1", 1000, true, Event::Started), 50).await;
    assert_eq!((o.complete, o.incomplete, peers(&o).len()), (1, 0, 0));
    let o = ann(&b, who("10.0.0.2", 2000, false, Event::Started), 50).await;
    assert_eq!((o.complete, o.incomplete), (1, 1));
    assert_eq!(peers(&o), [v4("10.0.0.1", 1000)]);
    // Another seed's started announce hears of seeds too (aria2's magnets);
    // its later ones of leechers only.
    let o = ann(&a, who("10.0.0.3", 3000, true, Event::Started), 50).await;
    let mut got = peers(&o);
    got.sort();
    assert_eq!(got, [v4("10.0.0.1", 1000), v4("10.0.0.2", 2000)]);
    let o = ann(&b, who("10.0.0.3", 3000, true, Event::None), 50).await;
    assert_eq!(peers(&o), [v4("10.0.0.2", 2000)]);
    // IPv6 peers are a family apart: counted, but not handed to IPv4 ones.
    let o = ann(&a, who("fd00::1", 4000, false, Event::Started), 50).await;
    assert!(o.peers.v6);
    assert_eq!((o.complete, o.incomplete, peers(&o).len()), (2, 2, 0));
    let o = ann(&b, who("fd00::2", 4001, true, Event::Started), 50).await;
    assert_eq!(peers(&o), [("fd00::1".parse().unwrap(), 4000)]);
    let o = ann(&a, who("10.0.0.2", 2000, false, Event::None), 50).await;
    assert_eq!(peers(&o).len(), 2, "the two IPv4 seeds, no IPv6 peer");
    // A completed download counts once, even when announced twice.
    ann(&b, who("10.0.0.2", 2000, true, Event::Completed), 50).await;
    ann(&a, who("10.0.0.2", 2000, true, Event::Completed), 50).await;
    // A leecher that stops with nothing left finished too (aria2 with
    // --seed-time=0 sends no completed).
    ann(&a, who("10.0.0.9", 9000, false, Event::Started), 50).await;
    ann(&a, who("10.0.0.9", 9000, true, Event::Stopped), 0).await;
    let scrape = a.scrape(&[h, InfoHash([8; 20])]).await.unwrap();
    assert_eq!(
        (
            scrape[0].complete,
            scrape[0].incomplete,
            scrape[0].downloaded
        ),
        (4, 1, 2)
    );
    assert_eq!(
        (
            scrape[1].complete,
            scrape[1].incomplete,
            scrape[1].downloaded
        ),
        (0, 0, 0)
    );
    // Dictionary-form replies carry the same peers.
    let o = b
        .announce(&h, who("10.0.0.5", 5000, false, Event::Started), 50, false)
        .await
        .unwrap();
    assert_eq!(o.peers.dicts.len(), 3);
    assert!(o.peers.compact.is_empty());
    // A stopped announce to an unknown swarm creates nothing.
    let unknown = InfoHash([9; 20]);
    b.announce(&unknown, who("10.0.0.1", 1, false, Event::Stopped), 0, true)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.connection())
        .unwrap();
    assert!(
        keys.iter().all(|k| !k.contains(&unknown.to_hex())),
        "{keys:?}"
    );
    // Every key has a TTL (an abandoned swarm vanishes on its own) and
    // carries the info hash as its hash tag.
    for k in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(k)
            .query(&mut redis.connection())
            .unwrap();
        assert!((1..=660).contains(&ttl), "{k}: TTL {ttl}");
        assert!(k.contains(&format!("{{{}}}", h.to_hex())), "{k}");
    }
}

#[tokio::test]
async fn samples_are_distinct_never_the_announcer_and_bounded() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = store(&redis, options());
    let h = InfoHash([1; 20]);
    for i in 0..30u16 {
        s.announce(&h, who("10.1.0.1", 100 + i, true, Event::Started), 0, true)
            .await
            .unwrap();
        s.announce(&h, who("10.1.0.2", 100 + i, false, Event::Started), 0, true)
            .await
            .unwrap();
    }
    let me = who("10.1.0.2", 105, false, Event::None);
    let mut seeds_seen = 0;
    for _ in 0..20 {
        let o = s.announce(&h, me, 20, true).await.unwrap();
        let got = peers(&o);
        assert_eq!(got.len(), 20);
        let distinct: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 20);
        assert!(!got.contains(&v4("10.1.0.2", 105)));
        seeds_seen += got.iter().filter(|p| p.0 == v4("10.1.0.1", 0).0).count();
    }
    // Half the others are seeds: about 200 of the 400 handed out.
    assert!((100..=300).contains(&seeds_seen), "{seeds_seen} seeds");
    // Asking for more than there are gives all the others.
    let o = s.announce(&h, me, 200, true).await.unwrap();
    assert_eq!(peers(&o).len(), 59);
    // A seed gets leechers only.
    let o = s
        .announce(&h, who("10.1.0.1", 100, true, Event::None), 200, true)
        .await
        .unwrap();
    assert_eq!(peers(&o).len(), 30);
    assert!(peers(&o).iter().all(|p| p.0 == v4("10.1.0.2", 0).0));

    // A big swarm: samples are runs at random places, so over 40 replies
    // of 50 most of the 1000 others turn up (a uniform sample would show
    // 87% of them on average), and each reply has no repeats.
    let big = InfoHash([5; 20]);
    let joins = (0..1000u16).map(|i| {
        let s = &s;
        async move {
            s.announce(
                &big,
                who("10.1.1.1", 1000 + i, false, Event::Started),
                0,
                true,
            )
            .await
            .unwrap()
        }
    });
    futures_util::future::join_all(joins).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let o = s
            .announce(&big, who("10.1.1.1", 1000, false, Event::None), 50, true)
            .await
            .unwrap();
        let got = peers(&o);
        assert_eq!(got.len(), 50);
        assert!(!got.contains(&v4("10.1.1.1", 1000)));
        let distinct: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 50);
        seen.extend(got);
    }
    assert!(
        seen.len() > 700,
        "only {} of 999 peers ever handed out",
        seen.len()
    );
}

#[tokio::test]
async fn a_full_swarm_refuses_new_peers_but_not_known_ones() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = store(
        &redis,
        Options {
            max_swarm_peers: 3,
            ..options()
        },
    );
    let h = InfoHash([2; 20]);
    for port in 1..=3 {
        s.announce(&h, who("10.2.0.1", port, false, Event::Started), 5, true)
            .await
            .unwrap();
    }
    let new = s
        .announce(&h, who("10.2.0.1", 4, false, Event::Started), 5, true)
        .await;
    assert_eq!(new, Err(StoreError::Full));
    s.announce(&h, who("10.2.0.1", 2, true, Event::Completed), 5, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redis_at_its_maxmemory_refuses_new_peers_but_not_known_ones() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = store(&redis, options());
    let h = InfoHash([6; 20]);
    s.announce(&h, who("10.6.0.1", 1, false, Event::Started), 5, true)
        .await
        .unwrap();
    let set = |max: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(max)
            .query(&mut redis.connection())
            .unwrap();
    };
    // Less than Redis already uses: every write that may grow it is refused.
    set("1");
    for i in 0..5u8 {
        let other = InfoHash([100 + i; 20]);
        let r = s
            .announce(&other, who("10.6.0.2", 2, false, Event::Started), 5, true)
            .await;
        assert_eq!(r, Err(StoreError::Full));
    }
    let r = s
        .announce(&h, who("10.6.0.3", 3, false, Event::Started), 5, true)
        .await;
    assert_eq!(r, Err(StoreError::Full));
    // The known peer refreshes, completes and leaves; nothing was created.
    s.announce(&h, who("10.6.0.1", 1, true, Event::Completed), 5, true)
        .await
        .unwrap();
    s.announce(&h, who("10.6.0.1", 1, true, Event::Stopped), 0, true)
        .await
        .unwrap();
    // Full is Redis answering: no outage.
    assert!(s.health().up);
    assert_eq!(s.health().errors_total, 0);
    set("0");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:?4")
        .query(&mut redis.connection())
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    s.announce(&h, who("10.6.0.3", 3, false, Event::Started), 5, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn one_round_trip_per_announce_and_one_connection_for_many() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = Arc::new(store(&redis, options()));
    assert!(s.check().await.unwrap().is_ok());
    redis.reset_stats();
    // 300 announces at once, from one thread: they are pipelined on one
    // connection, each a single EVALSHA.
    let hashes: Vec<InfoHash> = (0..30).map(|i| InfoHash([i; 20])).collect();
    let all = (0..300u16).map(|i| {
        let s = s.clone();
        let h = hashes[usize::from(i) % 30];
        async move {
            s.announce(&h, who("10.3.0.1", i, i % 3 == 0, Event::Started), 50, true)
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(all).await;
    let calls = redis.all_calls();
    eprintln!("commands: {calls:?}");
    assert_eq!(redis.calls("evalsha"), 300);
    // (INFO commandstats also counts the commands the script runs inside
    // Redis; those are no round trips.) Never a scan of the key space.
    for (name, _) in &calls {
        assert!(
            !["keys", "scan", "hkeys", "hgetall"].contains(&name.as_str()),
            "{name}"
        );
    }
    // The script's own work per announce: 4 ZCARDs, not 8.
    assert_eq!(redis.calls("zcard"), 4 * 300);
    let clients = redis.info("clients");
    let connected: u64 = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The store's one connection and the one this INFO came over.
    assert_eq!(connected, 2, "{clients}");
    // A scrape of 30 hashes is one pipelined exchange of 30 script calls.
    redis.reset_stats();
    let before = s.health().calls_total;
    let counts = s.scrape(&hashes).await.unwrap();
    assert_eq!(s.health().calls_total, before + 1);
    assert_eq!(redis.calls("evalsha"), 30);
    assert!(counts.iter().all(|c| c.complete + c.incomplete == 10));
}

#[tokio::test]
async fn expired_peers_are_neither_counted_nor_handed_out() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = store(
        &redis,
        Options {
            peer_timeout: 1,
            ..options()
        },
    );
    let h = InfoHash([3; 20]);
    s.announce(&h, who("10.4.0.1", 1, true, Event::Started), 5, true)
        .await
        .unwrap();
    // Redis's clock decides: wait (at most 5 s) for the peer to expire.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.scrape(&[h]).await.unwrap()[0].complete != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the peer never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = s
        .announce(&h, who("10.4.0.2", 2, false, Event::Started), 5, true)
        .await
        .unwrap();
    assert_eq!((o.complete, o.incomplete, peers(&o).len()), (0, 1, 0));
}

#[tokio::test]
async fn an_outage_is_a_failure_reason_and_recovery_is_automatic() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let s = store(
        &redis,
        Options {
            timeout: Duration::from_millis(500),
            ..options()
        },
    );
    let h = InfoHash([4; 20]);
    s.announce(&h, who("10.5.0.1", 1, true, Event::Started), 5, true)
        .await
        .unwrap();
    assert!(s.health().up);
    redis.stop();
    let r = s
        .announce(&h, who("10.5.0.2", 2, false, Event::Started), 5, true)
        .await;
    assert_eq!(r, Err(StoreError::Unavailable));
    // One failure is an error, not yet an outage; three in a row are.
    assert!(s.health().up);
    for _ in 0..2 {
        assert_eq!(s.scrape(&[h]).await, Err(StoreError::Unavailable));
    }
    let health = s.health();
    assert!(!health.up);
    assert_eq!(health.outages_total, 1);
    assert_eq!(health.errors_total, 3);
    // During the outage most requests do not even ask Redis.
    for _ in 0..20 {
        assert_eq!(s.scrape(&[h]).await, Err(StoreError::Unavailable));
    }
    let health = s.health();
    assert!(health.shed_total >= 10, "{health:?}");
    assert_eq!(health.outages_total, 1, "one outage, however many errors");
    // Back, empty (no persistence) and without our scripts: both are
    // loaded again (by the next probe), and the swarm forms anew.
    redis.restart();
    wait_until_up(&s).await;
    assert_eq!(s.scrape(&[h]).await.unwrap()[0].complete, 0);
    let o = s
        .announce(&h, who("10.5.0.2", 2, false, Event::Started), 5, true)
        .await
        .unwrap();
    assert_eq!((o.complete, o.incomplete), (0, 1));
    let health = s.health();
    assert!(health.up);
    assert_eq!(health.outages_total, 1);

    // A Redis that hangs: each request waits for its deadline and no
    // longer, then the store is unavailable; when Redis wakes, the
    // connection is still good and serving goes on.
    redis.freeze();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = s
            .announce(&h, who("10.5.0.3", 3, false, Event::Started), 5, true)
            .await;
        let waited = started.elapsed();
        assert_eq!(r, Err(StoreError::Unavailable));
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }
    assert_eq!(s.health().outages_total, 2);
    // Now an outage: answered at once, without waiting for Redis.
    let started = std::time::Instant::now();
    assert_eq!(s.scrape(&[h]).await, Err(StoreError::Unavailable));
    assert!(started.elapsed() < Duration::from_millis(100));
    redis.thaw();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.scrape(&[h]).await {
            Ok(c) => {
                // The announce that timed out was still queued in Redis's
                // socket, and ran when it woke: 1 or 2 leechers.
                assert!((1..=2).contains(&c[0].incomplete), "{c:?}");
                break;
            }
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(s.health().up);
}

/// Waits (at most 10 s) for a store in an outage to find Redis back: the
/// next probe, within 250 ms of the last.
async fn wait_until_up(s: &RedisStore) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.scrape(&[InfoHash([0; 20])]).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves a tracker over `store` on 127.0.0.1:0 (HTTP and UDP, two worker
/// threads).
struct Server {
    tracker: Arc<Tracker>,
    running: Running,
}

impl std::ops::Deref for Server {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
}

impl Server {
    fn start(store: RedisStore) -> Server {
        let tracker = Arc::new(
            Tracker::with_store(Config::default(), Store::Redis(Box::new(store))).unwrap(),
        );
        let running = Running::serve(
            tracker.clone(),
            ServeOptions {
                threads: 2,
                ..ServeOptions::default()
            },
        );
        Server { tracker, running }
    }
}

fn http(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn announce_get(hash: u8, port: u16, left: u64, close: bool) -> String {
    let h = format!("%{hash:02x}").repeat(20);
    let id = format!("%{:02x}", port % 256).repeat(20);
    format!(
        "GET /announce?info_hash={h}&peer_id={id}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1 HTTP/1.1\r\nHost: x\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

#[test]
fn the_server_answers_http_and_udp_from_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let opts = Options {
        timeout: Duration::from_millis(500),
        ..options()
    };
    let one = Server::start(store(&redis, opts.clone()));
    let two = Server::start(store(&redis, opts));
    // A seed announces over HTTP to one; a leecher over UDP to two hears
    // of it.
    let r = http(one.addr, &announce_get(0x21, 6001, 0, true));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("8:completei1e"), "{r}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = udp_announce(&udp, two.addr, 0x21, 6002, 10);
    assert_eq!(r.len(), 26, "{r:?}");
    assert_eq!(&r[8..12], &1800u32.to_be_bytes());
    assert_eq!(&r[12..20], &[0, 0, 0, 1, 0, 0, 0, 1], "1 leecher, 1 seeder");
    assert_eq!(&r[20..], &[127, 0, 0, 1, 0x17, 0x71]);
    // Keep-alive HTTP, two pipelined announces, both answered in order.
    let two_at_once = announce_get(0x21, 6003, 10, false) + &announce_get(0x21, 6004, 10, true);
    let r = http(one.addr, &two_at_once);
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    // UDP scrape on one, HTTP scrape on two: the same counts.
    let r = udp_scrape(&udp, one.addr, &[0x21, 0x22]);
    assert_eq!(
        &r[8..],
        &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let r = http(
        two.addr,
        &format!(
            "GET /scrape?info_hash={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "%21".repeat(20)
        ),
    );
    assert!(
        r.contains("8:completei1e10:downloadedi0e10:incompletei3e"),
        "{r}"
    );
    // Redis gone: HTTP says why in a failure reason, UDP in an error.
    redis.stop();
    let r = http(one.addr, &announce_get(0x21, 6005, 10, true));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("tracker store unavailable"), "{r}");
    let r = udp_announce(&udp, two.addr, 0x21, 6006, 10);
    assert_eq!(&r[..4], &3u32.to_be_bytes(), "an error reply");
    assert!(String::from_utf8_lossy(&r[8..]).contains("unavailable"));
    // Even a scrape of one hash (36 bytes) gets its error (33 bytes).
    let r = udp_scrape(&udp, two.addr, &[0x21]);
    assert_eq!(&r[..4], &3u32.to_be_bytes(), "an error reply");
    // A third failure in a row on instance one: an outage.
    for port in [6007, 6008] {
        let _ = http(one.addr, &announce_get(0x21, port, 10, true));
    }
    let stats = http(
        one.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(stats.contains("shoal_tracker_store_up 0"), "{stats}");
    // Back: both serve again, with no restart of their own (once their
    // next probe finds Redis).
    redis.restart();
    let mut r = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !r.contains("8:completei1e") {
        assert!(std::time::Instant::now() < deadline, "{r}");
        r = http(two.addr, &announce_get(0x23, 7001, 0, true));
    }
    let mut r = Vec::new();
    while r.len() != 26 {
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        r = udp_announce(&udp, one.addr, 0x23, 7002, 10);
    }
    assert_eq!(&r[20..], &[127, 0, 0, 1, 0x1b, 0x59]);
    let stats = http(
        one.addr,
        "GET /stats.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(stats.contains("\"up\":true"), "{stats}");
    assert!(one.tracker.announce_count() >= 3);
}
