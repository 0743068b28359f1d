//! Thousands of nodes in memory on a simulated clock: they bootstrap from
//! one router, converge on the closest nodes, and a peer announced by one
//! node is found by another; hostile traffic is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dht::routing::K;
use dht::{Announce, Config, Event, Node, NodeId};

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

impl Net {
    fn new(n: usize) -> Net {
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
    net.settle(5);
    let sizes: Vec<usize> = net.nodes.iter().map(|n| n.table().len()).collect();
    let min = *sizes.iter().min().unwrap();
    let avg = sizes.iter().sum::<usize>() / N;
    eprintln!(
        "{N} nodes joined: {} datagrams, table size min {min} avg {avg}",
        net.delivered
    );
    assert!(min >= K, "a node knows only {min} others");

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

    // A announces; B, elsewhere in the id space, finds A.
    let info_hash = NodeId::random();
    let (a, b) = (11, N - 3);
    net.nodes[a].get_peers(
        info_hash,
        Some(Announce {
            port: 51413,
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
    let holders = net
        .nodes
        .iter()
        .filter(|n| n.store().peer_count() > 0)
        .count();
    // The nodes that stored it are among the true closest.
    let closest = true_closest(&net, &info_hash, 2 * K);
    let stored_close = net
        .nodes
        .iter()
        .filter(|n| n.store().peer_count() > 0 && closest.contains(&n.id()))
        .count();
    eprintln!(
        "announced to {announced}; {holders} store it, {stored_close} of them among the 16 closest"
    );
    assert!(stored_close >= K - 2);

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
    eprintln!(
        "get_peers from another node: {found:?} in {} datagrams",
        net.delivered - before
    );
    assert_eq!(found, vec![SocketAddr::new(addr(a).ip(), 51413)]);
}

#[test]
fn nodes_that_vanish_time_out_and_lookups_still_end() {
    const N: usize = 300;
    let mut net = Net::new(N);
    for i in 0..N {
        net.nodes[i].bootstrap(net.now);
        net.collect(i);
    }
    net.settle(3);
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
    net.settle(3);
    let saved = net.nodes[5].save();
    let id = net.nodes[5].id();
    // Restart node 5 with no router at all.
    let mut fresh = Node::restore(&saved, Config::default(), net.now);
    assert_eq!(fresh.id(), id);
    assert!(fresh.table().is_empty());
    fresh.bootstrap(net.now);
    net.nodes[5] = fresh;
    net.collect(5);
    net.settle(3);
    assert!(
        net.nodes[5].table().len() >= K,
        "{}",
        net.nodes[5].table().len()
    );
    // Garbage in the state file gives a fresh node, not a panic.
    let n = Node::restore(b"d2:id3:abc5:nodes7:garbagee", Config::default(), net.now);
    assert!(n.table().is_empty());
}
