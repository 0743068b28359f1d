use super::*;

fn info_of(len: usize) -> (Vec<u8>, InfoHash) {
    // Not a real info dictionary: the fetch only checks the hash.
    let raw: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let h = InfoHash(Sha1::digest(&raw).into());
    (raw, h)
}

fn hs(size: u64) -> ExtHandshake {
    let mut h = ExtHandshake {
        metadata_size: Some(size),
        ..ExtHandshake::default()
    };
    h.extensions.insert(NAME.into(), 3);
    h
}

/// Answers every request of `key` from `raw`, as an honest peer would.
fn answer(
    f: &mut Fetch,
    key: PeerKey,
    raw: &[u8],
    pieces: &[u32],
    now: Instant,
) -> Option<Vec<u8>> {
    for &p in pieces {
        let m = serve(raw, p);
        if let Outcome::Done(b) = f.received(key, &m, now).unwrap() {
            return Some(b);
        }
    }
    None
}

/// Asks `key` for pieces and answers them from `src` until it is asked
/// nothing more (its depth grows as it delivers); the last outcome.
fn serve_all(f: &mut Fetch, key: PeerKey, src: &[u8], now: Instant) -> Option<Outcome> {
    let mut last = None;
    loop {
        let a = f.requests(key, now);
        if a.is_empty() {
            return last;
        }
        for p in a {
            let o = f.received(key, &serve(src, p), now).unwrap();
            if !matches!(o, Outcome::More) {
                return Some(o);
            }
            last = Some(o);
        }
    }
}

#[test]
fn a_new_peer_starts_shallow_and_deepens_as_it_delivers() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 60);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    f.add_peer(1, &hs(raw.len() as u64), now).unwrap();
    let a = f.requests(1, now);
    assert_eq!(a.len(), START_DEPTH);
    // A second peer that says hello a moment later still gets work.
    f.add_peer(2, &hs(raw.len() as u64), now).unwrap();
    let b = f.requests(2, now);
    assert_eq!(b.len(), START_DEPTH);
    assert!(b.iter().all(|p| !a.contains(p)));
    assert_eq!(answer(&mut f, 1, &raw, &a, now), None);
    let a = f.requests(1, now);
    assert_eq!(a.len(), START_DEPTH + 2);
    answer(&mut f, 1, &raw, &a, now);
    let mut depth = 0;
    for _ in 0..10 {
        let a = f.requests(1, now);
        depth = depth.max(a.len());
        answer(&mut f, 1, &raw, &a, now);
    }
    assert_eq!(depth, DEPTH);
}

#[test]
fn while_others_connect_the_first_peer_gets_only_its_share() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 9);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    f.set_pending(2);
    f.add_peer(1, &hs(raw.len() as u64), now).unwrap();
    let mut got = 0;
    for _ in 0..10 {
        let a = f.requests(1, now);
        got += a.len();
        answer(&mut f, 1, &raw, &a, now);
    }
    // Nine pieces, three peers: three for the first.
    assert_eq!(got, 3);
    f.set_pending(1);
    f.add_peer(2, &hs(raw.len() as u64), now).unwrap();
    let b = f.requests(2, now);
    assert_eq!(b.len(), START_DEPTH);
    // Once the wait is over there is no cap, others connecting or not.
    let later = now + SPREAD_WAIT;
    assert_eq!(answer(&mut f, 2, &raw, &b, later), None);
    let done = serve_all(&mut f, 1, &raw, later);
    assert!(done == Some(Outcome::Done(raw.clone())), "not done");
    assert_eq!(f.senders().len(), 2);
}

#[test]
fn messages_round_trip_and_read_libtorrents() {
    for m in [
        MetaMsg::Request(7),
        MetaMsg::Reject(0),
        MetaMsg::Data {
            piece: 2,
            total_size: Some(40000),
            data: b"xyz",
        },
    ] {
        assert_eq!(MetaMsg::decode(&m.encode()).unwrap(), m);
    }
    let raw = b"d8:msg_typei1e5:piecei0e10:total_sizei3eeabc";
    assert_eq!(
        MetaMsg::decode(raw).unwrap(),
        MetaMsg::Data {
            piece: 0,
            total_size: Some(3),
            data: b"abc"
        }
    );
    assert_eq!(
        MetaMsg::decode(b"d8:msg_typei9e5:piecei0ee").unwrap(),
        MetaMsg::Unknown
    );
    assert!(MetaMsg::decode(b"d8:msg_typei0ee").is_err());
    assert!(MetaMsg::decode(b"d8:msg_typei0e5:piecei-1ee").is_err());
    assert!(MetaMsg::decode(b"d8:msg_typei0e5:piecei4294967296ee").is_err());
    assert!(MetaMsg::decode(b"li1ee").is_err());
    assert!(MetaMsg::decode(b"d8:msg_type").is_err());
}

#[test]
fn serves_pieces_and_rejects_past_the_end() {
    let (raw, _) = info_of(PIECE * 2 + 100);
    match serve(&raw, 2) {
        MetaMsg::Data {
            data, total_size, ..
        } => {
            assert_eq!(data, &raw[2 * PIECE..]);
            assert_eq!(total_size, Some(raw.len() as u64));
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(serve(&raw, 3), MetaMsg::Reject(3));
    assert_eq!(serve(&raw, u32::MAX), MetaMsg::Reject(u32::MAX));
}

#[test]
fn fetches_from_several_peers_at_once() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 40 + 5);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    for k in 1..=3 {
        f.add_peer(k, &hs(raw.len() as u64), now).unwrap();
    }
    let asked: Vec<Vec<u32>> = (1..=3).map(|k| f.requests(k, now)).collect();
    // Each is asked for different pieces, START_DEPTH each at first.
    assert!(asked.iter().all(|a| a.len() == START_DEPTH));
    let mut all: Vec<u32> = asked.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 3 * START_DEPTH);
    assert!(asked[0].iter().all(|p| !asked[1].contains(p)));
    let mut done = None;
    for (k, a) in asked.iter().enumerate() {
        done = done.or(answer(&mut f, k as u64 + 1, &raw, a, now));
    }
    for _ in 0..10 {
        for k in 1..=3u64 {
            let a = f.requests(k, now);
            done = done.or(answer(&mut f, k, &raw, &a, now));
        }
    }
    assert_eq!(done.unwrap(), raw);
    assert!(f.is_done());
    assert!(f.senders().len() > 1, "{:?}", f.senders());
}

#[test]
fn a_rejected_or_unanswered_piece_goes_to_another_peer() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 2);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    f.add_peer(1, &hs(raw.len() as u64), now).unwrap();
    assert_eq!(f.requests(1, now), vec![0, 1]);
    f.add_peer(2, &hs(raw.len() as u64), now).unwrap();
    // Both asked of 1 just now: 2 would only race it.
    assert!(f.requests(2, now).is_empty());
    // A while later 2 may duplicate them, to finish sooner.
    let t1 = now + DUPLICATE_AFTER;
    assert_eq!(f.requests(2, t1), vec![0, 1]);
    f.add_peer(3, &hs(raw.len() as u64), t1).unwrap();
    assert!(f.requests(3, t1).is_empty());
    // 1 rejects piece 0: it is not asked of 1 again at once; 3 takes it
    // once 2 has had it a while.
    f.received(1, &MetaMsg::Reject(0), t1).unwrap();
    assert!(f.requests(3, t1).is_empty());
    let t2 = t1 + DUPLICATE_AFTER;
    assert_eq!(f.requests(3, t2), vec![0]);
    assert!(f.requests(1, t2).is_empty());
    // Nobody answers piece 1 for REQUEST_TIMEOUT: 3 is asked too.
    let later = t1 + REQUEST_TIMEOUT;
    assert_eq!(f.requests(3, later), vec![1]);
    assert_eq!(answer(&mut f, 3, &raw, &[0, 1], later), Some(raw.clone()));
    // Late answers from the others change nothing.
    let late = serve(&raw, 1);
    assert_eq!(f.received(2, &late, later).unwrap(), Outcome::More);
}

#[test]
fn sizes_over_the_cap_are_refused_before_allocating() {
    let now = Instant::now();
    let (_, h) = info_of(100);
    let mut f = Fetch::new(h, 8 << 20, now);
    for k in 0..100 {
        assert_eq!(
            f.add_peer(k, &hs(1 << 31), now),
            Err(Unfit::TooBig(1 << 31, 8 << 20))
        );
    }
    assert_eq!(f.progress().size, None);
    assert!(f.buf.capacity() == 0);
    assert_eq!(
        f.add_peer(200, &ExtHandshake::default(), now),
        Err(Unfit::NoMetadata)
    );
    assert_eq!(f.add_peer(201, &hs(0), now), Err(Unfit::NoMetadata));
}

#[test]
fn a_peer_announcing_another_size_cannot_stop_the_fetch() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 3);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    // The liar comes first, announces nearly the cap, and answers nothing.
    f.add_peer(9, &hs(DEFAULT_MAX_SIZE as u64), now).unwrap();
    assert_eq!(f.requests(9, now).len(), START_DEPTH);
    f.add_peer(1, &hs(raw.len() as u64), now).unwrap();
    f.add_peer(2, &hs(raw.len() as u64), now).unwrap();
    assert!(f.requests(1, now).is_empty(), "set aside at first");
    // After STALL the size two peers announce is fetched instead.
    let t = now + STALL;
    assert_eq!(
        serve_all(&mut f, 1, &raw, t),
        Some(Outcome::Done(raw.clone()))
    );
    assert_eq!(f.progress().size, Some(raw.len()));
}

#[test]
fn when_the_peers_of_a_size_leave_another_size_is_fetched() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE + 1);
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    f.add_peer(9, &hs(5), now).unwrap();
    f.add_peer(1, &hs(raw.len() as u64), now).unwrap();
    assert_eq!(f.requests(9, now), vec![0]);
    f.remove_peer(9, now);
    let a = f.requests(1, now);
    assert_eq!(a, vec![0, 1]);
    assert_eq!(answer(&mut f, 1, &raw, &a, now), Some(raw));
}

#[test]
fn malformed_data_makes_the_peer_unfit_and_the_piece_goes_elsewhere() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 2 + 10);
    let n = raw.len() as u64;
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    for k in 1..=4 {
        f.add_peer(k, &hs(n), now).unwrap();
    }
    assert_eq!(f.requests(1, now), vec![0, 1]);
    // Unasked piece.
    let bad = MetaMsg::Data {
        piece: 0,
        total_size: Some(n),
        data: &raw[..PIECE],
    };
    assert_eq!(f.received(2, &bad, now), Err(Unfit::Unrequested(0)));
    assert!(f.unfit(2).is_some());
    assert!(f.requests(2, now).is_empty());
    // Wrong length.
    let short = MetaMsg::Data {
        piece: 0,
        total_size: Some(n),
        data: &raw[..100],
    };
    assert!(matches!(
        f.received(1, &short, now),
        Err(Unfit::WrongLength {
            piece: 0,
            got: 100,
            ..
        })
    ));
    // A total size that changed.
    assert_eq!(f.requests(3, now), vec![0, 1]);
    let moved = MetaMsg::Data {
        piece: 1,
        total_size: Some(n + 1),
        data: &raw[PIECE..2 * PIECE],
    };
    assert!(matches!(
        f.received(3, &moved, now),
        Err(Unfit::SizeChanged { .. })
    ));
    assert_eq!(serve_all(&mut f, 4, &raw, now), Some(Outcome::Done(raw)));
}

#[test]
fn a_whole_that_fails_the_hash_is_blamed_on_its_sender() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 4);
    let n = raw.len() as u64;
    let mut forged = raw.clone();
    forged[3 * PIECE + 5] ^= 1;
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    // One liar alone sends it all.
    f.add_peer(9, &hs(n), now).unwrap();
    assert_eq!(
        serve_all(&mut f, 9, &forged, now),
        Some(Outcome::HashFailed)
    );
    assert_eq!(f.unfit(9), Some(&Unfit::BadHash));
    f.add_peer(1, &hs(n), now).unwrap();
    assert_eq!(serve_all(&mut f, 1, &raw, now), Some(Outcome::Done(raw)));
}

#[test]
fn a_liar_among_several_senders_is_found_by_asking_each_alone() {
    let now = Instant::now();
    let (raw, h) = info_of(PIECE * 8);
    let n = raw.len() as u64;
    let forged: Vec<u8> = raw.iter().map(|b| b ^ 0x55).collect();
    let mut f = Fetch::new(h, DEFAULT_MAX_SIZE, now);
    // Peer 1 lies; 2 and 3 are honest. The first round mixes them.
    for k in 1..=3 {
        f.add_peer(k, &hs(n), now).unwrap();
    }
    let source = |k: u64| if k == 1 { &forged } else { &raw };
    let mut t = now;
    let mut result = None;
    let mut failures = 0;
    'outer: for _ in 0..20 {
        t += Duration::from_secs(1);
        for k in 1..=3u64 {
            let a = f.requests(k, t);
            for p in a {
                match f.received(k, &serve(source(k), p), t).unwrap() {
                    Outcome::Done(b) => {
                        result = Some(b);
                        break 'outer;
                    }
                    Outcome::HashFailed => failures += 1,
                    Outcome::More => {}
                }
            }
        }
    }
    assert_eq!(result, Some(raw));
    assert!(failures >= 1);
    // The honest peer that completed it alone sent every piece.
    assert_eq!(f.senders().len(), 1);
    assert!(!f.senders().contains_key(&1));
}
