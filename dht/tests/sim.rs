//! Thousands of nodes in memory on a simulated clock: they bootstrap from
//! one router, converge on the closest nodes, and a peer announced by one
//! node is found by another; hostile traffic is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dht::krpc::{Body, Msg, Query, Want};
use dht::routing::K;
use dht::{Announce, Config, Event, Family, Node, NodeId};

struct Net {
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    addrs: Vec<SocketAddr>,
    /// In flight: (from, to, datagram).
    wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    now: Instant,
    delivered: usize,
    events: Vec<(usize, Event)>,
}

fn addr(i: usize) -> SocketAddr {
    // 10.0.0.0/8: private (BEP 42 exempt), one IP per node.
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i as u32 + 1), 6881))
}

fn addr6(i: usize) -> SocketAddr {
    // fd00::/8 (unique local, BEP 42 exempt), one /64 per node.
    let ip = Ipv6Addr::new(0xfd00, 0, 0, i as u16 + 1, 0, 0, 0, 1);
    SocketAddr::from((ip, 6881))
}

impl Net {
    fn new(n: usize) -> Net {
        Net::of(n, Family::V4)
    }

    fn of(n: usize, family: Family) -> Net {
        let addr = match family {
            Family::V4 => addr,
            Family::V6 => addr6,
        };
        let now = Instant::now();
        let router = addr(0);
        let mut net = Net {
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            addrs: Vec::new(),
            wire: VecDeque::new(),
            now,
            delivered: 0,
            events: Vec::new(),
        };
        for i in 0..n {
            let config = Config {
                family,
                bootstrap: if i == 0 { vec![] } else { vec![router] },
                ..Config::default()
            };
            net.nodes.push(Node::new(config, now));
            net.by_addr.insert(addr(i), i);
            net.addrs.push(addr(i));
        }
        net
    }

    fn collect(&mut self, i: usize) {
        while let Some((to, bytes)) = self.nodes[i].poll_transmit() {
            self.wire.push_back((self.addrs[i], to, bytes));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
    }

    /// Delivers everything in flight (and what it causes) until quiet,
    /// then lets `secs` of time pass tick by tick.
    fn settle(&mut self, secs: u64) {
        let end = self.now + Duration::from_secs(secs);
        loop {
            while let Some((from, to, bytes)) = self.wire.pop_front() {
                self.delivered += 1;
                if let Some(&j) = self.by_addr.get(&to) {
                    self.nodes[j].handle(from, &bytes, self.now);
                    self.collect(j);
                }
            }
            if self.now >= end {
                break;
            }
            self.now += Duration::from_millis(500);
            for i in 0..self.nodes.len() {
                if self.nodes[i].next_timeout() <= self.now {
                    self.nodes[i].tick(self.now);
                    self.collect(i);
                }
            }
        }
    }
}

/// The `k` ids closest to `target` among all nodes, by brute force.
fn true_closest(net: &Net, target: &NodeId, k: usize) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = net.nodes.iter().map(Node::id).collect();
    ids.sort_by_key(|id| target.distance(id));
    ids.truncate(k);
    ids
}

#[test]
fn two_thousand_nodes_find_each_others_peers() {
    const N: usize = 2000;
    let mut net = Net::new(N);
    let t0 = net.now;
    net.nodes[0].bootstrap(t0);
    net.collect(0);
    for i in 1..N {
        net.nodes[i].bootstrap(net.now);
        net.collect(i);
        // Join in batches, as real nodes trickle in.
        if i % 50 == 0 {
            net.settle(0);
        }
    }
    // A minute for the late joins to settle (re-bootstraps, refreshes).
    net.settle(60);
    let sizes: Vec<usize> = net.nodes.iter().map(|n| n.table().len()).collect();
    let min = *sizes.iter().min().unwrap();
    let avg = sizes.iter().sum::<usize>() / N;
    eprintln!(
        "{N} nodes joined: {} datagrams, table size min {min} avg {avg}",
        net.delivered
    );
    let small: Vec<usize> = (0..N).filter(|&j| sizes[j] < K).collect();
    assert!(min >= K, "nodes {small:?} know fewer than {K} others");
    let empty0: Vec<usize> = (0..N)
        .filter(|&j| {
            let t = net.nodes[j].table();
            !t.entries().any(|e| t.own_id().common_prefix(&e.id) == 0)
        })
        .collect();
    // Each knows the other half of the id space (it did not before the
    // join refreshed every bucket through the routers).
    assert!(
        empty0.len() <= N / 100,
        "{} nodes know no node of the other half: {:?}",
        empty0.len(),
        &empty0[..empty0.len().min(20)]
    );

    // A lookup finds the true closest nodes.
    let target = NodeId::random();
    let before = net.delivered;
    let lid = net.nodes[7].find_node(target, net.now).unwrap();
    net.collect(7);
    net.settle(0);
    let done = net
        .events
        .iter()
        .find_map(|(i, e)| match e {
            Event::Done {
                lookup, answered, ..
            } if *i == 7 && *lookup == lid => Some(*answered),
            _ => None,
        })
        .expect("the lookup ended");
    eprintln!(
        "find_node: {done} answered, {} datagrams",
        net.delivered - before
    );
    assert!(done >= K);

    // A announces; B, elsewhere in the id space, finds A: 20 times, for
    // 20 torrents.
    let mut datagrams = Vec::new();
    for trial in 0..20 {
        let (a, b) = (11 + trial * 97, N - 3 - trial * 89);
        datagrams.push(announce_and_find(&mut net, a, b));
    }
    datagrams.sort_unstable();
    eprintln!(
        "20 get_peers from other nodes found the announcer: median {} datagrams, most {}",
        datagrams[10], datagrams[19]
    );
}

/// Node `a` announces a new torrent, node `b` looks it up; returns the
/// datagrams `b`'s lookup took.
fn announce_and_find(net: &mut Net, a: usize, b: usize) -> usize {
    let info_hash = NodeId::random();
    let port = 10_000 + a as u16;
    net.events.clear();
    net.nodes[a].get_peers(
        info_hash,
        Some(Announce {
            port,
            implied_port: false,
        }),
        net.now,
    );
    net.collect(a);
    net.settle(0);
    let announced = net
        .events
        .iter()
        .find_map(|(i, e)| match e {
            Event::Done { announced, .. } if *i == a => Some(*announced),
            _ => None,
        })
        .unwrap();
    assert!(announced >= K - 1, "announced to {announced}");
    // The nodes that stored it are among the true closest.
    let closest = true_closest(net, &info_hash, 2 * K);
    let stored_close = net
        .nodes
        .iter()
        .filter(|n| closest.contains(&n.id()) && !n.store().peers(&info_hash, net.now).is_empty())
        .count();
    assert!(
        stored_close >= K - 2,
        "{stored_close} of the closest store it"
    );

    let before = net.delivered;
    let lid = net.nodes[b].get_peers(info_hash, None, net.now).unwrap();
    net.collect(b);
    net.settle(0);
    let found: Vec<SocketAddr> = net
        .events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::Peers { lookup, peers, .. } if *i == b && *lookup == lid => Some(peers.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    if found.is_empty() {
        let done = net
            .events
            .iter()
            .find(|(i, e)| *i == b && matches!(e, Event::Done { lookup, .. } if *lookup == lid));
        let ranks: Vec<usize> = closest
            .iter()
            .enumerate()
            .filter(|(_, id)| {
                net.nodes
                    .iter()
                    .any(|n| n.id() == **id && !n.store().peers(&info_hash, net.now).is_empty())
            })
            .map(|(r, _)| r)
            .collect();
        eprintln!("miss: {done:?}; storers at ranks {ranks:?}");
        // An oracle lookup over the tables themselves.
        let target = info_hash;
        let mut known: Vec<(NodeId, SocketAddr)> =
            net.nodes[b].table().closest(&target, 16, net.now);
        let mut asked = std::collections::HashSet::new();
        loop {
            known.sort_by_key(|(id, _)| target.distance(id));
            known.dedup();
            known.truncate(8);
            let Some(&(id, addr_)) = known.iter().find(|(id, _)| !asked.contains(id)) else {
                break;
            };
            asked.insert(id);
            let j = net.by_addr[&addr_];
            known.extend(net.nodes[j].table().closest(&target, 8, net.now));
        }
        let oracle: Vec<usize> = known
            .iter()
            .map(|(id, _)| closest.iter().position(|c| c == id).unwrap_or(99))
            .collect();
        eprintln!(
            "oracle lookup ends at ranks {oracle:?} after {} asked",
            asked.len()
        );
        for (id, a) in &known {
            let j = net.by_addr[a];
            let t = net.nodes[j].table();
            let toward: Vec<usize> = t
                .entries()
                .filter(|e| e.id.common_prefix(&target) > id.common_prefix(&target))
                .map(|e| e.id.common_prefix(&target))
                .collect();
            eprintln!("  node {j}: prefix {} with target; table {} nodes in {} buckets; closer ones known: {toward:?}", id.common_prefix(&target), t.len(), t.bucket_count());
        }
        let hist = |j: usize| {
            let t = net.nodes[j].table();
            let mut h = vec![0usize; t.bucket_count()];
            for e in t.entries() {
                h[t.own_id().common_prefix(&e.id).min(t.bucket_count() - 1)] += 1;
            }
            h
        };
        eprintln!("  B's buckets {:?}", hist(b));
        let zeros = (0..net.nodes.len()).filter(|&j| hist(j)[0] == 0).count();
        eprintln!(
            "  nodes with an empty bucket 0: {zeros}; stats of B {:?}",
            net.nodes[b].stats()
        );
        for c in &closest[..8] {
            eprintln!("  closest: prefix {}", c.common_prefix(&target));
        }
    }
    assert_eq!(
        found,
        vec![SocketAddr::new(net.addrs[a].ip(), port)],
        "node {b} looking for node {a}'s torrent"
    );
    net.delivered - before
}

#[test]
fn nodes_that_vanish_time_out_and_lookups_still_end() {
    const N: usize = 300;
    let mut net = Net::new(N);
    for i in 0..N {
        net.nodes[i].bootstrap(net.now);
        net.collect(i);
    }
    net.settle(30);
    // A third of the network goes silent.
    for i in (1..N).step_by(3) {
        net.by_addr.remove(&addr(i));
    }
    let lid = net.nodes[2]
        .get_peers(NodeId::random(), None, net.now)
        .unwrap();
    net.collect(2);
    net.settle(30);
    assert!(
        net.events
            .iter()
            .any(|(i, e)| *i == 2 && matches!(e, Event::Done { lookup, answered, .. } if *lookup == lid && *answered >= K)),
        "the lookup did not end with answers"
    );
    assert!(net.nodes[2].stats().timeouts > 0);
}

#[test]
fn a_saved_table_rejoins_without_the_router() {
    const N: usize = 200;
    let mut net = Net::new(N);
    for i in 0..N {
        net.nodes[i].bootstrap(net.now);
        net.collect(i);
    }
    net.settle(30);
    let saved = net.nodes[5].save();
    let id = net.nodes[5].id();
    // Restart node 5 with no router at all.
    let mut fresh = Node::restore(&saved, Config::default(), net.now);
    assert_eq!(fresh.id(), id);
    assert!(fresh.table().is_empty());
    fresh.bootstrap(net.now);
    net.nodes[5] = fresh;
    net.collect(5);
    net.settle(30);
    assert!(
        net.nodes[5].table().len() >= K,
        "{}",
        net.nodes[5].table().len()
    );
    // Garbage in the state file gives a fresh node, not a panic.
    let n = Node::restore(b"d2:id3:abc5:nodes7:garbagee", Config::default(), net.now);
    assert!(n.table().is_empty());
}

#[test]
fn an_ipv6_network_finds_peers_and_keeps_its_table() {
    const N: usize = 400;
    let mut net = Net::of(N, Family::V6);
    for i in 0..N {
        net.nodes[i].bootstrap(net.now);
        net.collect(i);
    }
    net.settle(60);
    for i in 0..N {
        assert!(net.nodes[i].table().len() >= K, "node {i}");
    }
    for (a, b) in [(3, 77), (150, 9), (399, 200)] {
        let found = announce_and_find(&mut net, a, b);
        assert!(found >= 1);
    }
    // Peers found are IPv6 ones, and the table saved as nodes6 restores.
    let saved = net.nodes[8].save();
    let v = torrent_format::bencode::decode(&saved).unwrap();
    assert!(v.get("nodes6").is_some() && v.get("nodes").is_none());
    let config = Config {
        family: Family::V6,
        ..Config::default()
    };
    let mut fresh = Node::restore(&saved, config, net.now);
    fresh.bootstrap(net.now);
    net.nodes[8] = fresh;
    net.collect(8);
    net.settle(30);
    assert!(net.nodes[8].table().len() >= K);
    // A v4 node given a v6 table takes none of it.
    let n = Node::restore(&saved, Config::default(), net.now);
    let mut n = n;
    n.bootstrap(net.now);
    assert!(
        n.poll_transmit().is_none(),
        "a v4 node queried a v6 address"
    );
}

/// A find_node to the v6 node of a dual-stack host, from `from`.
fn ask_dual(node6: &mut Node, node4: &Node, want: Want, now: Instant) -> Msg {
    let from = SocketAddr::from((Ipv6Addr::new(0xfd99, 0, 0, 1, 0, 0, 0, 1), 6881));
    let q = Msg {
        t: b"tt".to_vec(),
        body: Body::Query(Query::FindNode {
            id: NodeId::random(),
            target: NodeId::random(),
        }),
        v: None,
        ip: None,
        read_only: true,
        want,
    };
    node6.handle_with(from, &q.encode(), now, Some(node4));
    let (to, bytes) = node6.poll_transmit().expect("an answer");
    assert_eq!(to, from);
    Msg::decode(&bytes).unwrap()
}

#[test]
fn a_dual_stack_host_answers_what_want_asks_for() {
    let mut net4 = Net::new(60);
    let mut net6 = Net::of(60, Family::V6);
    for i in 0..60 {
        net4.nodes[i].bootstrap(net4.now);
        net4.collect(i);
        net6.nodes[i].bootstrap(net6.now);
        net6.collect(i);
    }
    net4.settle(30);
    net6.settle(30);
    let now = net6.now.max(net4.now);
    let node4 = &net4.nodes[1];
    let node6 = &mut net6.nodes[1];
    let nodes = |m: &Msg| match &m.body {
        Body::Response(r) => (r.nodes.len(), r.nodes6.len()),
        other => panic!("{other:?}"),
    };
    // No want: the querier's own family.
    assert_eq!(nodes(&ask_dual(node6, node4, Want::default(), now)), (0, K));
    let both = Want { n4: true, n6: true };
    assert_eq!(nodes(&ask_dual(node6, node4, both, now)), (K, K));
    let v4 = Want {
        n4: true,
        n6: false,
    };
    assert_eq!(nodes(&ask_dual(node6, node4, v4, now)), (K, 0));
    // A v4 address arriving on the v6 node (v4-mapped, say) is ignored.
    let q = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    node6.handle(SocketAddr::from(([10, 0, 0, 9], 1)), q, now);
    assert!(node6.poll_transmit().is_none());
}
