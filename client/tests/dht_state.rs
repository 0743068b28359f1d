//! The DHT state file: saved on shutdown, its id reused by the next run,
//! and never shared by two nodes running at once; a dual-stack node keeps
//! a table per family (BEP 32).

use std::net::SocketAddr;
use std::time::Duration;

use client::dht::{Announce, Dht, DhtConfig, LookupEvent};

fn config(state: &std::path::Path) -> DhtConfig {
    DhtConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        bootstrap: Vec::new(),
        state_file: Some(state.to_path_buf()),
        enforce_node_id: true,
    }
}

#[tokio::test]
async fn two_nodes_at_once_never_share_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("shoal/dht.dat");
    // A node that knows one other saves a table.
    let a = Dht::start(config(&state)).await.unwrap();
    let b = Dht::start(DhtConfig {
        state_file: None,
        ..config(&state)
    })
    .await
    .unwrap();
    a.add_node(b.local_addr()).await;
    for _ in 0..100 {
        if a.status().await.nodes > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.status().await.nodes, 1);
    let id = a.status().await.id;
    a.shutdown().await;
    assert!(state.exists());
    // The next run takes the saved id…
    let a2 = Dht::start(config(&state)).await.unwrap();
    assert_eq!(a2.status().await.id, id);
    // …and while it runs, another node on the same state takes its own,
    // and saves nothing over it.
    let c = Dht::start(config(&state)).await.unwrap();
    assert_ne!(c.status().await.id, id);
    c.add_node(b.local_addr()).await;
    c.shutdown().await;
    a2.shutdown().await;
    let d = Dht::start(config(&state)).await.unwrap();
    assert_eq!(d.status().await.id, id);
    d.shutdown().await;
    b.shutdown().await;
}

/// Waits until `cond` holds of the node's status (at most 5 s).
async fn wait_for(node: &Dht, what: &str, cond: impl Fn(&client::dht::DhtStatus) -> bool) {
    for _ in 0..250 {
        if cond(&node.status().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: {:?}", node.status().await);
}

#[tokio::test]
async fn a_dual_stack_node_serves_and_saves_both_families() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("shoal/dht.dat");
    let dual = |state: Option<std::path::PathBuf>| DhtConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        bootstrap: Vec::new(),
        state_file: state,
        enforce_node_id: true,
    };
    let a = Dht::start(dual(Some(state.clone()))).await.unwrap();
    let b = Dht::start(dual(None)).await.unwrap();
    let c = Dht::start(dual(None)).await.unwrap();
    assert_eq!(a.local_addrs().len(), 2);
    for &addr in b.local_addrs() {
        a.add_node(addr).await;
        c.add_node(addr).await;
    }
    wait_for(&a, "A knows B in both families", |s| {
        s.nodes == 2 && s.nodes6 == 1
    })
    .await;
    wait_for(&c, "C knows B in both families", |s| {
        s.nodes == 2 && s.nodes6 == 1
    })
    .await;
    // A announces itself to B over both families…
    let hash = [7u8; 20];
    let announce = Announce {
        port: 4242,
        implied_port: false,
    };
    let mut events = a.get_peers(hash, Some(announce)).await;
    loop {
        match events.recv().await {
            Some(LookupEvent::Done { announced, .. }) => {
                assert!(
                    announced >= 2,
                    "announced to {announced}: B in both families, at least"
                );
                break;
            }
            Some(LookupEvent::Peers(_)) => {}
            None => panic!("the lookup vanished"),
        }
    }
    // …and C's one lookup finds it at both addresses.
    let mut found: Vec<SocketAddr> = Vec::new();
    let mut events = c.get_peers(hash, None).await;
    while let Some(e) = events.recv().await {
        match e {
            LookupEvent::Peers(p) => found.extend(p),
            LookupEvent::Done { .. } => break,
        }
    }
    found.sort();
    let want: Vec<SocketAddr> = vec![
        "127.0.0.1:4242".parse().unwrap(),
        "[::1]:4242".parse().unwrap(),
    ];
    assert_eq!(found, want);
    // Each family's table goes to its own file.
    a.shutdown().await;
    assert!(state.exists());
    assert!(state.with_file_name("dht6.dat").exists());
    b.shutdown().await;
    c.shutdown().await;
}
