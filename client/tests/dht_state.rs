//! The DHT state file: saved on shutdown, its id reused by the next run,
//! and never shared by two nodes running at once.

use client::dht::{Dht, DhtConfig};

fn config(state: &std::path::Path) -> DhtConfig {
    DhtConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
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
