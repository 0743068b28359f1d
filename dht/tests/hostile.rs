//! One node against hostile traffic: floods, forged tokens, unknown
//! transaction ids, answers from the wrong address, malformed datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dht::krpc::{self, Body, Msg, Query, Response};
use dht::{Config, Node, NodeId};

fn query(t: &[u8], q: Query) -> Vec<u8> {
    Msg {
        t: t.to_vec(),
        body: Body::Query(q),
        v: None,
        ip: None,
        read_only: false,
        want: dht::krpc::Want::default(),
    }
    .encode()
}

fn replies(node: &mut Node) -> Vec<(SocketAddr, Msg)> {
    let mut out = Vec::new();
    while let Some((to, bytes)) = node.poll_transmit() {
        out.push((to, Msg::decode(&bytes).expect("we send valid KRPC")));
    }
    out
}

/// A node with a table of `n` nodes at 10.1.x.y that queried it and
/// answered the ping it sent them back.
fn node_with_table(n: u32, now: Instant) -> Node {
    let mut node = Node::new(Config::default(), now);
    for i in 0..n {
        let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 6881));
        let id = NodeId::random();
        node.handle(from, &query(b"aa", Query::Ping { id }), now);
        for (to, m) in replies(&mut node) {
            if let Body::Query(_) = m.body {
                let answer = Msg {
                    t: m.t,
                    body: Body::Response(Response {
                        id,
                        ..Response::default()
                    }),
                    v: None,
                    ip: None,
                    read_only: false,
                    want: dht::krpc::Want::default(),
                };
                node.handle(to, &answer.encode(), now);
            }
        }
    }
    replies(&mut node);
    node
}

#[test]
fn a_query_flood_from_one_address_gets_little_back() {
    let t0 = Instant::now();
    let mut node = node_with_table(300, t0);
    let before = node.stats();
    let attacker: SocketAddr = "10.9.9.9:4444".parse().unwrap();
    let q = query(
        b"xy",
        Query::FindNode {
            id: NodeId::random(),
            target: NodeId::random(),
        },
    );
    let mut sent = 0u64;
    let mut back = 0u64;
    // 1000 queries a second for 20 s.
    for ms in 0..20_000u64 {
        let now = t0 + Duration::from_millis(ms);
        node.handle(attacker, &q, now);
        sent += q.len() as u64;
        for (to, m) in replies(&mut node) {
            assert_eq!(to, attacker);
            back += m.encode().len() as u64;
        }
    }
    let s = node.stats();
    eprintln!(
        "flood: {sent} bytes in, {back} bytes out ({:.3}×), {} rate limited",
        back as f64 / sent as f64,
        s.rate_limited - before.rate_limited
    );
    assert!(back <= 3 * sent);
    assert!(back * 20 < sent, "the rate limit cut the flood off");
    // One find_node answer alone is about 3× its query, never more.
    let mut fresh = node_with_table(300, t0);
    fresh.handle(attacker, &q, t0);
    let (_, m) = replies(&mut fresh).pop().unwrap();
    let ratio = m.encode().len() as f64 / q.len() as f64;
    eprintln!(
        "one find_node: {} bytes for {} ({ratio:.2}×)",
        m.encode().len(),
        q.len()
    );
    assert!(ratio <= 3.5, "{ratio}");
}

#[test]
fn tokens_must_be_the_ones_we_gave_that_address() {
    let t0 = Instant::now();
    let mut node = node_with_table(20, t0);
    let peer: SocketAddr = "10.2.0.1:7000".parse().unwrap();
    let other: SocketAddr = "10.2.0.2:7000".parse().unwrap();
    let info_hash = NodeId::random();
    let announce = |token: Vec<u8>, implied: bool| {
        query(
            b"an",
            Query::AnnouncePeer {
                id: NodeId::random(),
                info_hash,
                port: 6881,
                implied_port: implied,
                token,
            },
        )
    };
    // A forged token: an error, nothing stored.
    node.handle(peer, &announce(b"forged!!".to_vec(), false), t0);
    let r = replies(&mut node);
    assert!(matches!(
        r[0].1.body,
        Body::Error {
            code: krpc::ERR_PROTOCOL,
            ..
        }
    ));
    assert_eq!(node.store().peer_count(), 0);
    // A real token, but used from another address: refused too.
    node.handle(
        peer,
        &query(
            b"gp",
            Query::GetPeers {
                id: NodeId::random(),
                info_hash,
            },
        ),
        t0,
    );
    let Body::Response(Response {
        token: Some(token), ..
    }) = replies(&mut node).remove(0).1.body
    else {
        panic!("get_peers gave no token")
    };
    node.handle(other, &announce(token.clone(), false), t0);
    replies(&mut node);
    assert_eq!(node.store().peer_count(), 0);
    // From the right address, with implied_port: stored at the UDP port.
    node.handle(peer, &announce(token, true), t0);
    replies(&mut node);
    node.handle(
        other,
        &query(
            b"g2",
            Query::GetPeers {
                id: NodeId::random(),
                info_hash,
            },
        ),
        t0,
    );
    let Body::Response(r) = replies(&mut node).remove(0).1.body else {
        panic!()
    };
    assert_eq!(r.values, vec![peer]);
}

#[test]
fn answers_we_did_not_ask_for_are_dropped() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::default(), t0);
    let real: SocketAddr = "10.3.0.1:6881".parse().unwrap();
    node.add_node(real, t0);
    let (to, ping) = node.poll_transmit().unwrap();
    assert_eq!(to, real);
    let t = Msg::decode(&ping).unwrap().t;
    let answer = |t: &[u8]| {
        Msg {
            t: t.to_vec(),
            body: Body::Response(Response {
                id: NodeId::random(),
                ..Response::default()
            }),
            v: None,
            ip: None,
            read_only: false,
            want: dht::krpc::Want::default(),
        }
        .encode()
    };
    // The right transaction id from another address, a wrong id from the
    // right address: neither enters the table.
    node.handle("10.3.0.2:6881".parse().unwrap(), &answer(&t), t0);
    node.handle(real, &answer(b"zz"), t0);
    node.handle(real, &answer(b"toolongtid"), t0);
    assert!(node.table().is_empty());
    assert_eq!(node.stats().unknown_tid, 3);
    node.handle(real, &answer(&t), t0);
    assert_eq!(node.table().len(), 1);
    // And only once.
    node.handle(real, &answer(&t), t0);
    assert_eq!(node.stats().unknown_tid, 4);
}

#[test]
fn malformed_datagrams_get_an_error_or_nothing() {
    let t0 = Instant::now();
    let mut node = node_with_table(10, t0);
    let from: SocketAddr = "10.4.0.1:6881".parse().unwrap();
    // A query with a short id: a protocol error echoing the transaction.
    node.handle(from, b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe", t0);
    let r = replies(&mut node);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.t, b"aa");
    assert!(matches!(r[0].1.body, Body::Error { code: 203, .. }));
    // An error is no bigger than the query that caused it, about.
    let query_len = b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe".len();
    assert!(r[0].1.encode().len() <= query_len + 16, "{:?}", r[0].1);
    // An unknown method without a target: 204; with one: nodes.
    node.handle(
        from,
        &query(
            b"um",
            Query::Unknown {
                id: NodeId::random(),
                method: b"vote".to_vec(),
                target: None,
            },
        ),
        t0,
    );
    assert!(matches!(
        replies(&mut node)[0].1.body,
        Body::Error { code: 204, .. }
    ));
    node.handle(
        from,
        &query(
            b"ut",
            Query::Unknown {
                id: NodeId::random(),
                method: b"sample_infohashes".to_vec(),
                target: Some(NodeId::random()),
            },
        ),
        t0,
    );
    assert!(matches!(&replies(&mut node)[0].1.body, Body::Response(r) if !r.nodes.is_empty()));
    // Garbage, responses and errors nobody asked for, huge datagrams, a
    // query too short to be real: no answer at all.
    for junk in [
        &b"garbage"[..],
        b"d1:t0:1:y1:qe",
        b"d1:t2:aa1:y1:re",
        b"d1:eli201e1:xe1:t2:aa1:y1:ee",
        &[b'd'; 5000],
        b"",
    ] {
        node.handle(from, junk, t0);
        assert!(replies(&mut node).is_empty(), "{junk:?}");
    }
}

#[test]
fn public_nodes_need_a_bep42_id_to_enter_the_table() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::default(), t0);
    let public: SocketAddr = "203.0.113.5:6881".parse().unwrap();
    let ping = |id| query(b"pp", Query::Ping { id });
    node.handle(public, &ping(NodeId([0x11; 20])), t0);
    replies(&mut node);
    assert!(
        node.table().is_empty(),
        "a random id at a public address entered"
    );
    node.handle(public, &ping(dht::id::id_for_ip(public.ip())), t0);
    replies(&mut node);
    assert_eq!(node.table().len(), 1);
}

#[test]
fn our_id_comes_to_fit_the_address_five_nodes_see() {
    let t0 = Instant::now();
    let mut node = Node::new(Config::default(), t0);
    let before = node.id();
    let ours: SocketAddr = "203.0.113.50:6881".parse().unwrap();
    let answer = |node: &mut Node, voter: SocketAddr, t: Vec<u8>| {
        let m = Msg {
            t,
            body: Body::Response(Response {
                id: dht::id::id_for_ip(voter.ip()),
                ..Response::default()
            }),
            v: None,
            ip: Some(ours),
            read_only: false,
            want: dht::krpc::Want::default(),
        };
        node.handle(voter, &m.encode(), t0);
    };
    let ask = |node: &mut Node, voter: SocketAddr| {
        node.add_node(voter, t0);
        let (_, q) = node.poll_transmit().unwrap();
        answer(node, voter, Msg::decode(&q).unwrap().t);
    };
    // The same voter five times, then three others: four distinct.
    let voters: Vec<SocketAddr> = (1..=5)
        .map(|i| SocketAddr::from(([198, 51, 100, i], 6881)))
        .collect();
    ask(&mut node, voters[0]);
    // (add_node pings a known node no more: it is asked again by lookups.)
    for _ in 0..4 {
        node.find_node(NodeId::random(), t0);
        while let Some((to, q)) = node.poll_transmit() {
            assert_eq!(to, voters[0]);
            answer(&mut node, to, Msg::decode(&q).unwrap().t);
        }
    }
    for v in &voters[1..4] {
        ask(&mut node, *v);
    }
    assert_eq!(node.id(), before, "four nodes are not enough");
    ask(&mut node, voters[4]);
    assert_ne!(node.id(), before);
    assert!(dht::id::id_matches_ip(&node.id(), ours.ip()));
    // The table came along.
    assert_eq!(node.table().len(), 5);
    assert_eq!(node.table().own_id(), node.id());
    // An id given by the caller is kept.
    let fixed = NodeId([7; 20]);
    let mut node = Node::new(
        Config {
            id: Some(fixed),
            ..Config::default()
        },
        t0,
    );
    for v in &voters {
        ask(&mut node, *v);
    }
    assert_eq!(node.id(), fixed);
}

#[test]
fn peers_a_node_names_must_be_reachable_from_it() {
    let t0 = Instant::now();
    let router: SocketAddr = "198.51.100.7:6881".parse().unwrap();
    let mut node = Node::new(
        Config {
            bootstrap: vec![router],
            ..Config::default()
        },
        t0,
    );
    let lookup = node.get_peers(NodeId::random(), None, t0).unwrap();
    let (to, q) = node.poll_transmit().unwrap();
    assert_eq!(to, router);
    let values = [
        "127.0.0.1:22",
        "10.0.0.1:80",
        "0.0.0.0:5",
        "224.0.0.1:9",
        "8.8.8.8:0",
        "8.8.8.8:6881",
        // v4-mapped: the same loopback and LAN, in IPv6 dress.
        "[::ffff:127.0.0.1]:22",
        "[::ffff:10.0.0.1]:80",
        // The other family's network is not this node's (BEP 32).
        "[2001:db8::1]:6881",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let node_id = NodeId::random();
    let nodes = ["224.0.0.1:6881", "255.255.255.255:6881", "8.8.4.4:6881"]
        .iter()
        .map(|a| (node_id, a.parse().unwrap()))
        .collect();
    let answer = Msg {
        t: Msg::decode(&q).unwrap().t,
        body: Body::Response(Response {
            id: dht::id::id_for_ip(router.ip()),
            values,
            nodes,
            token: Some(b"tk".to_vec()),
            ..Response::default()
        }),
        v: None,
        ip: None,
        read_only: false,
        want: dht::krpc::Want::default(),
    };
    node.handle(router, &answer.encode(), t0);
    let mut found = Vec::new();
    while let Some(e) = node.poll_event() {
        if let dht::Event::Peers {
            lookup: l, peers, ..
        } = e
        {
            assert_eq!(l, lookup);
            found.extend(peers);
        }
    }
    assert_eq!(found, vec!["8.8.8.8:6881".parse::<SocketAddr>().unwrap()]);
    // Queried next: the unicast node only, never a multicast group.
    let asked: Vec<SocketAddr> = replies(&mut node).into_iter().map(|(to, _)| to).collect();
    assert_eq!(asked, vec!["8.8.4.4:6881".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn an_ipv6_node_takes_only_real_ipv6_nodes_and_peers() {
    let t0 = Instant::now();
    let router: SocketAddr = "[2001:db8::7]:6881".parse().unwrap();
    let mut node = Node::new(
        Config {
            family: dht::Family::V6,
            bootstrap: vec![router, "198.51.100.7:6881".parse().unwrap()],
            ..Config::default()
        },
        t0,
    );
    node.get_peers(NodeId::random(), None, t0).unwrap();
    let sent = replies(&mut node);
    assert_eq!(sent.len(), 1, "only the IPv6 router is asked");
    let (to, q) = &sent[0];
    assert_eq!(*to, router);
    let values = [
        "[::ffff:127.0.0.1]:22",
        "[::1]:22",
        "[fd00::1]:80",
        "[ff02::1]:9",
        "8.8.8.8:6881",
        "[2001:db8::5]:6881",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let nodes6 = [
        "[::ffff:127.0.0.1]:6881",
        "[ff05::1]:6881",
        "[2001:db8::9]:6881",
    ]
    .iter()
    .map(|a| (NodeId::random(), a.parse().unwrap()))
    .collect();
    let answer = Msg {
        t: q.t.clone(),
        body: Body::Response(Response {
            id: dht::id::id_for_ip(router.ip()),
            values,
            nodes6,
            token: Some(b"tk".to_vec()),
            ..Response::default()
        }),
        v: None,
        ip: None,
        read_only: false,
        want: dht::krpc::Want::default(),
    };
    node.handle(router, &answer.encode(), t0);
    let mut found = Vec::new();
    while let Some(e) = node.poll_event() {
        if let dht::Event::Peers { peers, .. } = e {
            found.extend(peers);
        }
    }
    assert_eq!(
        found,
        vec!["[2001:db8::5]:6881".parse::<SocketAddr>().unwrap()]
    );
    let asked: Vec<SocketAddr> = replies(&mut node).into_iter().map(|(to, _)| to).collect();
    assert_eq!(
        asked,
        vec!["[2001:db8::9]:6881".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn an_ipv6_host_has_one_query_budget_per_64() {
    let t0 = Instant::now();
    let mut limiter = dht::store::RateLimiter::default();
    let allowed = (0..200u16)
        .filter(|&i| {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i + 1);
            limiter.allow(ip.into(), t0)
        })
        .count();
    assert!(
        allowed <= 25,
        "{allowed} queries from one /64 in an instant"
    );
    assert!(limiter.allow("2001:db8:0:2::1".parse().unwrap(), t0));
}

#[test]
fn our_lan_nodes_are_never_handed_to_the_internet() {
    let t0 = Instant::now();
    let mut node = node_with_table(20, t0);
    let target = NodeId::random();
    let nodes_for = |node: &mut Node, from: &str| {
        let from: SocketAddr = from.parse().unwrap();
        let q = query(
            b"fn",
            Query::FindNode {
                id: NodeId::random(),
                target,
            },
        );
        node.handle(from, &q, t0);
        let r = replies(node);
        match &r
            .iter()
            .find(|(to, _)| *to == from)
            .expect("an answer")
            .1
            .body
        {
            Body::Response(r) => r.nodes.len(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(nodes_for(&mut node, "10.2.0.1:6881"), 8);
    assert_eq!(nodes_for(&mut node, "8.8.8.8:6881"), 0);
}
