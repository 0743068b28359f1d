//! The protocol state machine alone: no sockets, time passed in by hand.

use super::*;
use crate::session::tests::{add_peer, test_state};
use std::collections::HashSet;

use crate::wire::BLOCK;

/// Pieces of the test torrent (32 KiB each: two blocks).
const PIECES: usize = 40;

struct T {
    st: State,
    conn: Connection,
    now: Instant,
    /// The connection's own command channel (commands the torrent sent
    /// it, e.g. an unchoke from the choker).
    rx: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
}

fn features(fast: bool, extended: bool) -> Features {
    Features {
        dht: false,
        fast,
        extended,
    }
}

impl T {
    /// A connection to peer 10.0.0.9 on a torrent we have completely or
    /// not at all.
    fn new(complete: bool, f: Features) -> T {
        T::with(test_state(PIECES, complete), f, false)
    }

    /// A connection to 10.0.0.9 on a torrent we have all of but one piece
    /// outside its allowed-fast set: a leecher grants it allowed-fast
    /// pieces (a seed does not).
    fn all_but_one(f: Features) -> T {
        let mut st = test_state(PIECES, false);
        let set = allowed_fast_of_the_peer(&st);
        let lacking = (0..PIECES as u32).rev().find(|p| !set.contains(p)).unwrap();
        for p in (0..PIECES).filter(|&p| p as u32 != lacking) {
            st.have.set(p);
        }
        T::with(st, f, false)
    }

    /// A plain seed, unchoking a fast-extension leecher that has nothing
    /// (the start of every `spread` test).
    fn seed_unchoking_a_fast_leecher() -> T {
        let mut t = T::new(true, features(true, false));
        t.recv(Message::HaveNone).unwrap();
        t.cmd(Cmd::Unchoke).unwrap();
        t
    }

    fn with(st: State, f: Features, initial_seeding: bool) -> T {
        T::with_dht(st, f, initial_seeding, None)
    }

    fn with_dht(mut st: State, f: Features, initial_seeding: bool, dht_port: Option<u16>) -> T {
        let now = Instant::now();
        let (conn, rx) = connect(&mut st, 9, f, initial_seeding, dht_port, now);
        T { st, conn, now, rx }
    }

    fn out(&mut self) -> Vec<Message> {
        let bytes = self.conn.take_output();
        let mut b = bytes.as_slice();
        let mut v = Vec::new();
        while let Some((m, n)) = Message::decode(b).unwrap() {
            v.push(m);
            b = &b[n..];
        }
        assert!(b.is_empty());
        v
    }

    fn recv(&mut self, m: Message) -> Result<Option<Write>, Close> {
        self.conn.handle(m, self.now, &mut self.st)
    }

    fn cmd(&mut self, c: Cmd) -> Result<(), Close> {
        self.conn.command(c, self.now, &mut self.st)
    }

    fn pass(&mut self, d: Duration) -> Result<(), Close> {
        self.now += d;
        self.conn.tick(self.now, &mut self.st)
    }

    fn queued(&self) -> Vec<BlockRef> {
        self.conn.uploads().lock().iter().copied().collect()
    }

    /// The peer has every piece and unchokes us; returns our requests.
    fn seeded_and_unchoked(&mut self) -> Vec<BlockRef> {
        self.recv(Message::HaveAll).unwrap();
        self.recv(Message::Unchoke).unwrap();
        requests(&self.out())
    }
}

/// The allowed-fast set (BEP 6) of the test peer, 10.0.0.9.
fn allowed_fast_of_the_peer(st: &State) -> Vec<u32> {
    fast::allowed_fast_set(
        "10.0.0.9".parse().unwrap(),
        &st.info.info_hash(),
        PIECES as u32,
        fast::ALLOWED_FAST,
    )
}

/// A started connection to peer 10.0.0.`n` on `st`.
fn connect(
    st: &mut State,
    n: u8,
    f: Features,
    initial_seeding: bool,
    dht_port: Option<u16>,
    now: Instant,
) -> (Connection, tokio::sync::mpsc::UnboundedReceiver<Cmd>) {
    let (key, rx) = add_peer(st, n);
    let info = st.info.clone();
    let mut conn = Connection::new(
        Setup {
            key,
            ident: Ident {
                peer_id: [n; 20],
                addr: ([10, 0, 0, n], 6881).into(),
            },
            info_hash: info.info_hash(),
            info,
            features: f,
            port: 6881,
            dht_port,
            counters: Arc::default(),
            totals: Arc::default(),
            poked: Arc::default(),
            snub_after: Duration::from_secs(60),
            initial_seeding,
        },
        now,
    );
    conn.start(st, now);
    (conn, rx)
}

fn block(index: u32, n: u32) -> BlockRef {
    BlockRef {
        index,
        offset: n * BLOCK,
        length: BLOCK,
    }
}

fn requests(msgs: &[Message]) -> Vec<BlockRef> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Request(b) => Some(*b),
            _ => None,
        })
        .collect()
}

fn rejects(msgs: &[Message]) -> Vec<BlockRef> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::RejectRequest(b) => Some(*b),
            _ => None,
        })
        .collect()
}

fn piece(b: BlockRef) -> Message {
    Message::Piece {
        index: b.index,
        offset: b.offset,
        data: vec![7; b.length as usize],
    }
}

fn ext_handshake(msgs: &[Message]) -> ExtHandshake {
    let Some(Message::Extended(0, payload)) =
        msgs.iter().find(|m| matches!(m, Message::Extended(0, _)))
    else {
        panic!("no extended handshake in {msgs:?}");
    };
    ExtHandshake::decode(payload).unwrap()
}

// ---- What goes out first ----------------------------------------------

#[test]
fn a_fast_seed_sends_have_all_and_its_extended_handshake_but_no_allowed_fast() {
    let mut t = T::new(true, features(true, true));
    let msgs = t.out();
    assert_eq!(msgs[0], Message::HaveAll);
    let h = ext_handshake(&msgs);
    assert!(h.client.unwrap().starts_with("shoal/"));
    assert_eq!(h.reqq, Some(MAX_UPLOAD_QUEUE));
    assert_eq!(h.port, Some(6881));
    assert_eq!(h.your_ip, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(h.metadata_size, Some(t.st.info.raw_bytes().len() as u64));
    // Every choked peer would ask for its ten at once, sharing the seed's
    // link among all of them.
    assert!(
        !msgs.iter().any(|m| matches!(m, Message::AllowedFast(_))),
        "{msgs:?}"
    );
    // A leecher with the pieces grants the whole set.
    let mut t = T::all_but_one(features(true, true));
    let allowed: Vec<u32> = t
        .out()
        .iter()
        .filter_map(|m| match m {
            Message::AllowedFast(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(allowed, allowed_fast_of_the_peer(&t.st));
}

#[test]
fn first_messages_follow_what_we_have_and_what_was_negotiated() {
    // Fast, nothing yet: have_none, and no allowed-fast for pieces we lack.
    let mut t = T::new(false, features(true, false));
    assert_eq!(t.out(), [Message::HaveNone]);
    // No fast: a bitfield only when something is in it.
    let mut t = T::new(false, features(false, false));
    assert!(t.out().is_empty());
    let mut st = test_state(PIECES, false);
    st.have.set(3);
    let mut t = T::with(st, features(false, true), false);
    let msgs = t.out();
    assert!(matches!(msgs[0], Message::Bitfield(_)));
    assert_eq!(msgs.len(), 2, "bitfield and extended handshake: {msgs:?}");
    // Fast with some pieces: a bitfield, then allowed-fast only for those.
    let mut st = test_state(PIECES, false);
    let set = allowed_fast_of_the_peer(&st);
    st.have.set(set[0] as usize);
    let mut t = T::with(st, features(true, false), false);
    let msgs = t.out();
    assert!(matches!(msgs[0], Message::Bitfield(_)));
    assert_eq!(msgs[1..], [Message::AllowedFast(set[0])]);
    // A piece of the set we verify later is allowed then.
    t.cmd(Cmd::Have(set[1])).unwrap();
    assert_eq!(
        t.out(),
        [Message::Have(set[1]), Message::AllowedFast(set[1])]
    );
}

#[test]
fn an_initial_seed_sends_have_none_then_offers_with_suggestions() {
    let mut st = test_state(PIECES, true);
    st.initial_seeding = true;
    let mut t = T::with(st, features(true, true), true);
    let msgs = t.out();
    assert_eq!(msgs[0], Message::HaveNone);
    let haves = msgs
        .iter()
        .filter(|m| matches!(m, Message::Have(_)))
        .count();
    let suggests = msgs
        .iter()
        .filter(|m| matches!(m, Message::SuggestPiece(_)))
        .count();
    assert_eq!((haves, suggests), (2, 2), "{msgs:?}");
    assert!(
        !msgs.iter().any(|m| matches!(m, Message::AllowedFast(_))),
        "allowed-fast would reveal pieces"
    );
    // A piece it was not offered is rejected, an offered one queued.
    let offered = msgs
        .iter()
        .find_map(|m| match m {
            Message::Have(p) => Some(*p),
            _ => None,
        })
        .unwrap();
    t.cmd(Cmd::Unchoke).unwrap();
    t.out();
    let other = (0..PIECES as u32).find(|&p| !t.conn.initial.as_ref().unwrap().allows(p));
    let other = other.unwrap();
    t.recv(Message::Request(block(other, 0))).unwrap();
    assert_eq!(rejects(&t.out()), [block(other, 0)]);
    t.recv(Message::Request(block(offered, 0))).unwrap();
    assert_eq!(t.queued(), [block(offered, 0)]);
}

// ---- Serving requests ---------------------------------------------------

#[test]
fn requests_while_choked_are_rejected_with_fast_and_dropped_without() {
    let mut t = T::all_but_one(features(true, false));
    t.out();
    let set = t.conn.allowed_out.clone();
    let not_fast = (0..PIECES as u32).find(|p| !set.contains(p)).unwrap();
    t.recv(Message::Request(block(not_fast, 0))).unwrap();
    assert_eq!(rejects(&t.out()), [block(not_fast, 0)]);
    assert!(t.queued().is_empty());
    // An allowed-fast piece is served while choked.
    t.recv(Message::Request(block(set[0], 1))).unwrap();
    assert!(t.out().is_empty());
    assert_eq!(t.queued(), [block(set[0], 1)]);

    let mut t = T::new(true, features(false, false));
    t.out();
    t.recv(Message::Request(block(not_fast, 0))).unwrap();
    assert!(
        t.out().is_empty(),
        "BEP 3: dropped, the peer knows it is choked"
    );
    assert!(t.queued().is_empty());
}

#[test]
fn requests_are_queued_up_to_the_limit_then_rejected_or_the_peer_dropped() {
    for fast in [true, false] {
        let mut t = T::new(true, features(fast, true));
        t.cmd(Cmd::Unchoke).unwrap();
        t.out();
        let all: Vec<BlockRef> = (0..PIECES as u32)
            .flat_map(|p| [block(p, 0), block(p, 1)])
            .filter(|b| u64::from(b.offset + b.length) <= t.st.info.piece_size(b.index as usize))
            .collect();
        // Duplicates count too: a peer may ask again.
        let mut sent = 0;
        while sent < MAX_UPLOAD_QUEUE {
            let b = all[sent % all.len()];
            t.recv(Message::Request(b)).unwrap();
            sent += 1;
        }
        assert_eq!(t.queued().len(), MAX_UPLOAD_QUEUE);
        assert!(t.out().is_empty());
        let over = t.recv(Message::Request(all[0]));
        if fast {
            over.unwrap();
            assert_eq!(rejects(&t.out()), [all[0]]);
        } else {
            assert!(
                matches!(over, Err(Close::Violation(Violation::TooManyRequests))),
                "{over:?}"
            );
        }
    }
}

#[test]
fn requests_for_missing_or_impossible_blocks() {
    let mut st = test_state(PIECES, false);
    st.have.set(0);
    let mut t = T::with(st, features(true, false), false);
    t.cmd(Cmd::Unchoke).unwrap();
    t.out();
    t.recv(Message::Request(block(5, 0))).unwrap();
    assert_eq!(rejects(&t.out()), [block(5, 0)]);
    for bad in [
        block(PIECES as u32, 0),
        block(0, 2),
        BlockRef {
            index: 0,
            offset: 0,
            length: 0,
        },
        BlockRef {
            index: 0,
            offset: u32::MAX,
            length: BLOCK,
        },
    ] {
        let r = t.recv(Message::Request(bad));
        assert!(
            matches!(r, Err(Close::Violation(Violation::RequestOutOfRange(_)))),
            "{bad:?}: {r:?}"
        );
    }
    let mut st = test_state(PIECES, false);
    st.have.set(0);
    let mut t = T::with(st, features(false, false), false);
    t.cmd(Cmd::Unchoke).unwrap();
    let r = t.recv(Message::Request(block(5, 0)));
    assert!(matches!(
        r,
        Err(Close::Violation(Violation::RequestUnavailable(5)))
    ));
}

#[test]
fn choking_rejects_queued_requests_with_fast_and_drops_them_without() {
    let mut t = T::all_but_one(features(true, false));
    t.out();
    let set = t.conn.allowed_out.clone();
    let mut others = (0..PIECES as u32).filter(|&p| !set.contains(&p) && t.st.have.get(p as usize));
    let (current, other, third) = (
        others.next().unwrap(),
        others.next().unwrap(),
        others.next().unwrap(),
    );
    assert_eq!(t.st.info.piece_size(current as usize), 2 * u64::from(BLOCK));
    t.cmd(Cmd::Unchoke).unwrap();
    for b in [
        block(current, 0),
        block(current, 1),
        block(other, 0),
        block(third, 0),
        block(third, 1),
        block(set[0], 0),
    ] {
        t.recv(Message::Request(b)).unwrap();
    }
    t.out();
    // The writer took the first block of `current`: the piece being sent.
    assert_eq!(t.conn.uploads().take(1), [block(current, 0)]);
    t.cmd(Cmd::Choke).unwrap();
    let msgs = t.out();
    assert_eq!(msgs[0], Message::Choke);
    // `other`, asked for in part, is granted for the rest; `third`, asked
    // for whole and not begun, is rejected.
    let granted: Vec<&Message> = msgs
        .iter()
        .filter(|m| matches!(m, Message::AllowedFast(_)))
        .collect();
    assert_eq!(granted, [&Message::AllowedFast(other)]);
    assert_eq!(rejects(&msgs), [block(third, 0), block(third, 1)]);
    assert_eq!(
        t.queued(),
        [block(current, 1), block(other, 0), block(set[0], 0)],
        "the piece being sent is finished, a piece begun is kept, and \
         allowed-fast survives a choke"
    );
    // The rest of `other` is served, once; nothing else is.
    for b in [block(other, 1), block(other, 1), block(current, 1)] {
        t.recv(Message::Request(b)).unwrap();
    }
    assert_eq!(rejects(&t.out()), [block(other, 1), block(current, 1)]);
    // The grant ends with the next unchoke; the next choke grants what is
    // begun then.
    t.cmd(Cmd::Unchoke).unwrap();
    t.conn.uploads().lock().clear();
    t.recv(Message::Request(block(third, 0))).unwrap();
    t.cmd(Cmd::Choke).unwrap();
    assert!(t.out().contains(&Message::AllowedFast(third)));
    t.recv(Message::Request(block(other, 0))).unwrap();
    t.recv(Message::Request(block(third, 1))).unwrap();
    assert_eq!(rejects(&t.out()), [block(other, 0)]);

    let mut t = T::new(true, features(false, false));
    t.cmd(Cmd::Unchoke).unwrap();
    t.recv(Message::Request(block(other, 0))).unwrap();
    t.out();
    t.cmd(Cmd::Choke).unwrap();
    assert_eq!(t.out(), [Message::Choke]);
    assert!(t.queued().is_empty());
    // Choke and unchoke are said once each, however often asked.
    t.cmd(Cmd::Choke).unwrap();
    assert!(t.out().is_empty());
}

#[test]
fn a_cancelled_request_is_rejected_with_fast() {
    for fast in [true, false] {
        let mut t = T::new(true, features(fast, false));
        t.cmd(Cmd::Unchoke).unwrap();
        t.recv(Message::Request(block(1, 0))).unwrap();
        t.recv(Message::Request(block(2, 0))).unwrap();
        t.out();
        t.recv(Message::Cancel(block(1, 0))).unwrap();
        assert_eq!(t.queued(), [block(2, 0)]);
        let expect = if fast { vec![block(1, 0)] } else { vec![] };
        assert_eq!(rejects(&t.out()), expect);
        // A cancel for something not queued (already sent): nothing.
        t.recv(Message::Cancel(block(9, 0))).unwrap();
        assert!(t.out().is_empty());
    }
}

// ---- Downloading ------------------------------------------------------

#[test]
fn interest_then_requests_after_unchoke() {
    let mut t = T::new(false, features(false, false));
    t.out();
    let mut bits = Bitfield::new(PIECES);
    bits.set(4);
    t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    assert_eq!(t.out(), [Message::Interested]);
    t.recv(Message::Unchoke).unwrap();
    let mut reqs = requests(&t.out());
    reqs.sort_by_key(|b| (b.index, b.offset));
    assert_eq!(reqs, [block(4, 0), block(4, 1)]);
    // The blocks arrive: the last one says so, and is the end of the piece.
    let w = t.recv(piece(block(4, 1))).unwrap().unwrap();
    assert!(!w.last);
    let w = t.recv(piece(block(4, 0))).unwrap().unwrap();
    assert!(w.last && !w.digests);
    assert_eq!((w.piece, w.offset, w.data.len()), (4, 0, BLOCK as usize));
    // Once we have it all, no longer interested.
    t.st.picker.verified(4, true);
    t.st.have.set(4);
    t.cmd(Cmd::Have(4)).unwrap();
    assert_eq!(t.out(), [Message::Have(4), Message::NotInterested]);
}

/// Before the connection has a delivery-rate sample ([`crate::pace`]) or
/// the session's meter (updated each second) has one, the request queue
/// follows the rate measured since the peer began to send: a fast peer is
/// asked for more than `QUEUE_START` within 100 ms, a slow one for fewer,
/// and a new unchoke starts the measure again.
#[test]
fn the_early_rate_sets_the_queue_until_the_meter_has_a_sample() {
    let start = crate::session::QUEUE_START;
    let mut t = T::new(false, features(true, false));
    t.out();
    let mut reqs = t.seeded_and_unchoked();
    assert_eq!(reqs.len(), start);
    // Five blocks at once: too short a span to measure.
    for b in reqs.drain(..5) {
        t.recv(piece(b)).unwrap();
    }
    t.out();
    assert!(t.conn.inflight.len() <= start, "{}", t.conn.inflight.len());
    // Two more 100 ms later: 5 or 6 blocks in 0.1 s, about 1 MB/s, is a
    // queue of 25 to 30 (it answered the first request at once: half a
    // second ahead).
    t.now += Duration::from_millis(100);
    for b in reqs.drain(..2) {
        t.recv(piece(b)).unwrap();
    }
    t.out();
    assert!(t.conn.inflight.len() > 20, "{}", t.conn.inflight.len());
    // A choke and an unchoke forget it; a repeated unchoke does not.
    t.recv(Message::Unchoke).unwrap();
    assert!(t.conn.early.is_some());
    t.recv(Message::Choke).unwrap();
    t.recv(Message::Unchoke).unwrap();
    assert!(t.conn.early.is_none());

    // A slow peer: a block every 100 ms (160 KB/s, a queue of 5, so 8)
    // is asked for no more than `QUEUE_START` at once, then for 8.
    let mut t = T::new(false, features(true, false));
    t.out();
    t.seeded_and_unchoked();
    for _ in 0..12 {
        let b = t.conn.inflight[0];
        t.recv(piece(b)).unwrap();
        t.out();
        assert!(t.conn.inflight.len() <= start, "{}", t.conn.inflight.len());
        t.now += Duration::from_millis(100);
    }
    assert!(t.conn.inflight.len() <= 10, "{}", t.conn.inflight.len());
}

/// A peer that answers every request half a second after it was sent,
/// however few are queued (Transmission's pulse), is asked twice as far
/// ahead, and its queue doubles with each answer up to what it accepts
/// (`reqq`): asked half a second ahead, as a link-bound peer is, it would
/// send a queue's worth each half second and never more.
#[test]
fn a_peer_that_answers_late_gets_a_queue_that_doubles() {
    let mut t = T::with(test_state(400, false), features(true, false), false);
    t.out();
    // All but the last piece, which is short (its block would make a
    // sample less than a queue's worth).
    let mut bits = Bitfield::new(400);
    (0..399).for_each(|i| {
        bits.set(i);
    });
    t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    t.recv(Message::Unchoke).unwrap();
    let mut asked = requests(&t.out());
    let mut sizes = vec![asked.len()];
    for _ in 0..4 {
        t.now += Duration::from_millis(500);
        let mut next = Vec::new();
        for b in asked.drain(..) {
            t.recv(piece(b)).unwrap();
            next.extend(requests(&t.out()));
        }
        sizes.push(next.len());
        asked = next;
    }
    assert_eq!(sizes, [16, 32, 64, 128, extension::DEFAULT_REQQ]);
}

/// The first and last request of a batch are timed ([`crate::pace`]). A
/// timed request that is rejected or cancelled is no longer timed, so the
/// next batch is; one given back (snubbed) and asked again of the same
/// peer is not timed, since the answer to the first asking may still come.
#[test]
fn timed_requests_end_with_their_request() {
    let mut t = T::with(test_state(400, false), features(true, false), false);
    t.out();
    let reqs = t.seeded_and_unchoked();
    assert_eq!(t.conn.pace.timed(), [reqs[0], reqs[15]]);
    t.recv(Message::RejectRequest(reqs[0])).unwrap();
    assert_eq!(t.conn.pace.timed(), [reqs[15]]);
    t.cmd(Cmd::Cancel(reqs[15])).unwrap();
    assert_eq!(t.conn.pace.timed(), []);
    // Two answers make room for a batch of four, timed at both ends.
    for &b in &reqs[1..3] {
        t.recv(piece(b)).unwrap();
    }
    let batch = requests(&t.out());
    assert_eq!(batch.len(), 4, "{batch:?}");
    assert_eq!(t.conn.pace.timed(), [batch[0], batch[3]]);

    // Silent past the snub time: every request is given back, and the
    // torrent's poke asks again, one at a time, for one of them; that one
    // is not timed. (A connection without a reject, so that the retry of
    // rejected pieces plays no part.)
    let mut t = T::with(test_state(400, false), features(true, false), false);
    t.out();
    let reqs = t.seeded_and_unchoked();
    t.pass(Duration::from_secs(61)).unwrap();
    assert!(t.conn.inflight.is_empty());
    t.cmd(Cmd::Poke).unwrap();
    let again = requests(&t.out());
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(reqs.contains(&again[0]), "{again:?}");
    assert!(t.conn.forgiven.contains_key(&again[0]));
    assert_eq!(t.conn.pace.timed(), []);
}

/// A block given back at two snubs and asked of the same peer a third
/// time may arrive three times; each late copy is forgiven, a fourth is
/// not (the forgiven count is per request, not per block).
#[test]
fn each_request_given_back_forgives_one_late_copy() {
    // One piece of two blocks: re-asked blocks are soon asked twice over.
    let mut t = T::with(test_state(1, false), features(true, false), false);
    t.out();
    let first = t.seeded_and_unchoked();
    assert_eq!(first.len(), 2, "{first:?}");
    let mut asked = None;
    for _ in 0..3 {
        t.pass(Duration::from_secs(61)).unwrap();
        assert!(t.conn.inflight.is_empty());
        t.cmd(Cmd::Poke).unwrap();
        let again = requests(&t.out());
        assert_eq!(again.len(), 1, "{again:?}");
        if t.conn.forgiven.get(&again[0]) == Some(&2) {
            asked = Some(again[0]);
            break;
        }
    }
    let b = asked.expect("two blocks, three re-asks: one is asked thrice");
    // The answer to this request, then the two late ones to the first two.
    assert!(t.recv(piece(b)).unwrap().is_some());
    for _ in 0..2 {
        assert!(t.recv(piece(b)).unwrap().is_none());
    }
    assert!(!t.conn.forgiven.contains_key(&b));
    let r = t.recv(piece(b));
    assert!(
        matches!(r, Err(Close::Violation(Violation::Unrequested(_)))),
        "{r:?}"
    );
}

#[test]
fn a_block_we_never_asked_for_ends_the_connection() {
    let mut t = T::new(false, features(true, false));
    t.out();
    t.recv(Message::HaveAll).unwrap();
    let r = t.recv(piece(block(3, 0)));
    assert!(matches!(
        r,
        Err(Close::Violation(Violation::Unrequested(_)))
    ));
}

#[test]
fn with_fast_a_choke_keeps_requests_and_a_reject_frees_the_block() {
    let mut t = T::new(false, features(true, false));
    t.out();
    let reqs = t.seeded_and_unchoked();
    assert!(!reqs.is_empty());
    t.recv(Message::Choke).unwrap();
    assert_eq!(
        t.conn.inflight().len(),
        reqs.len(),
        "kept: each gets an answer"
    );
    // A piece still arrives after the choke and is taken.
    assert!(t.recv(piece(reqs[0])).unwrap().is_some());
    // A reject frees the block for anyone (this peer included) at once.
    t.recv(Message::RejectRequest(reqs[1])).unwrap();
    assert!(!t.conn.inflight().contains(&reqs[1]));
    let mut again = t.st.picker.pick(99, &all_pieces(), 1000, &mut rand::rng());
    again.retain(|b| *b == reqs[1]);
    assert_eq!(again, [reqs[1]], "the rejected block is free again");
    // A second reject for it (it crossed our cancel) is forgiven once...
    t.recv(Message::RejectRequest(reqs[1])).unwrap();
    // ... a reject for a block never asked for is a violation.
    let never = BlockRef {
        index: 0,
        offset: 100,
        length: 5,
    };
    assert!(!reqs.contains(&never));
    let r = t.recv(Message::RejectRequest(never));
    assert!(matches!(
        r,
        Err(Close::Violation(Violation::UnrequestedReject(_)))
    ));
}

fn all_pieces() -> Bitfield {
    let mut b = Bitfield::new(PIECES);
    (0..PIECES).for_each(|i| {
        b.set(i);
    });
    b
}

#[test]
fn without_fast_a_choke_releases_our_requests() {
    let mut t = T::new(false, features(false, false));
    t.out();
    let reqs = t.seeded_and_unchoked();
    t.recv(Message::Choke).unwrap();
    assert!(t.conn.inflight().is_empty());
    // The released blocks are forgiven if they still come.
    assert!(t.recv(piece(reqs[0])).unwrap().is_none());
}

#[test]
fn allowed_fast_pieces_are_requested_while_choked() {
    let mut t = T::new(false, features(true, false));
    t.out();
    t.recv(Message::HaveAll).unwrap();
    assert_eq!(t.out(), [Message::Interested]);
    // Out of range: ignored.
    t.recv(Message::AllowedFast(PIECES as u32)).unwrap();
    t.recv(Message::AllowedFast(u32::MAX)).unwrap();
    assert!(t.out().is_empty());
    t.recv(Message::AllowedFast(7)).unwrap();
    let mut reqs = requests(&t.out());
    reqs.sort_by_key(|b| b.offset);
    assert_eq!(reqs, [block(7, 0), block(7, 1)]);
    // Repeating it changes nothing; bounded in count.
    t.recv(Message::AllowedFast(7)).unwrap();
    for p in 0..200 {
        t.recv(Message::AllowedFast(p % PIECES as u32)).unwrap();
    }
    assert!(t.conn.allowed_in.len() <= PIECES);
    // Without fast, allowed-fast is not used while choked.
    let mut t = T::new(false, features(false, false));
    t.recv(Message::HaveAll).unwrap();
    t.recv(Message::AllowedFast(7)).unwrap();
    assert!(requests(&t.out()).is_empty());
}

/// A second peer 10.0.0.`n` of `t`'s torrent that has nothing, unchoked
/// by us; its first messages are taken.
fn second_leecher(t: &mut T, n: u8, fast: bool) -> Connection {
    let (mut c, _rx) = connect(&mut t.st, n, features(fast, false), false, None, t.now);
    c.handle(
        if fast {
            Message::HaveNone
        } else {
            Message::Bitfield(vec![0; PIECES.div_ceil(8)])
        },
        t.now,
        &mut t.st,
    )
    .unwrap();
    c.command(Cmd::Unchoke, t.now, &mut t.st).unwrap();
    c.take_output();
    c
}

fn sent(c: &mut Connection) -> Vec<Message> {
    let bytes = c.take_output();
    let mut b = bytes.as_slice();
    let mut v = Vec::new();
    while let Some((m, n)) = Message::decode(b).unwrap() {
        v.push(m);
        b = &b[n..];
    }
    v
}

#[test]
fn a_seed_points_a_second_asker_at_a_piece_nobody_got_yet() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    t.out();
    t.recv(Message::Request(block(0, 0))).unwrap();
    assert_eq!(t.queued(), [block(0, 0)]);
    let mut b = second_leecher(&mut t, 2, true);
    // Piece 0 already went to the first peer: rejected, and another piece
    // suggested (once per piece turned away).
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    b.handle(Message::Request(block(0, 1)), t.now, &mut t.st)
        .unwrap();
    let msgs = sent(&mut b);
    assert_eq!(rejects(&msgs), [block(0, 0), block(0, 1)]);
    let suggested: Vec<u32> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::SuggestPiece(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(suggested.len(), 1, "{msgs:?}");
    assert_ne!(suggested[0], 0);
    // The suggested piece is served...
    b.handle(Message::Request(block(suggested[0], 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(b.uploads().lock().len(), 1);
    // ...and so is piece 0 to a peer that asks again regardless, at the
    // latest after TURN_AWAY_FOR...
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(rejects(&sent(&mut b)), [block(0, 0)]);
    let later = t.now + TURN_AWAY_FOR;
    b.handle(Message::Request(block(0, 0)), later, &mut t.st)
        .unwrap();
    assert!(rejects(&sent(&mut b)).is_empty());
    assert_eq!(b.uploads().lock().len(), 2);
    // ...or after TURN_AWAY_ROUNDS requests per block: a client that asks
    // again at once does not ping-pong with us for long.
    let mut c = second_leecher(&mut t, 3, true);
    let mut turned = 0;
    loop {
        c.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
            .unwrap();
        if rejects(&sent(&mut c)).is_empty() {
            break;
        }
        turned += 1;
    }
    assert_eq!(turned, 2 * TURN_AWAY_ROUNDS);
    // The first peer gets the rest of piece 0 without question.
    t.recv(Message::Request(block(0, 1))).unwrap();
    assert_eq!(t.queued(), [block(0, 0), block(0, 1)]);
}

#[test]
fn pieces_begun_are_granted_at_a_choke_and_without_fast_given_back() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    t.recv(Message::Request(block(0, 0))).unwrap();
    t.recv(Message::Request(block(1, 0))).unwrap();
    t.out();
    // Choked while piece 0 was being sent and piece 1 waited: both are
    // granted (allowed fast) and finished, nothing is rejected...
    t.conn.uploads().take(1);
    t.cmd(Cmd::Choke).unwrap();
    let msgs = t.out();
    assert!(rejects(&msgs).is_empty(), "{msgs:?}");
    for p in [0, 1] {
        assert!(msgs.contains(&Message::AllowedFast(p)), "{msgs:?}");
    }
    t.recv(Message::Request(block(0, 1))).unwrap();
    t.recv(Message::Request(block(1, 1))).unwrap();
    assert!(rejects(&t.out()).is_empty());
    assert_eq!(t.queued(), [block(1, 0), block(0, 1), block(1, 1)]);
    // ... so both still count as on their way there.
    let mut b = second_leecher(&mut t, 2, true);
    for p in [0, 1] {
        b.handle(Message::Request(block(p, 0)), t.now, &mut t.st)
            .unwrap();
        assert_eq!(rejects(&sent(&mut b)), [block(p, 0)]);
    }

    // Without the fast extension a choke drops every request: the pieces
    // it had begun count as not sent, and the next asker gets them.
    let mut t = T::new(true, features(false, false));
    t.cmd(Cmd::Unchoke).unwrap();
    t.recv(Message::Request(block(0, 0))).unwrap();
    t.recv(Message::Request(block(1, 0))).unwrap();
    t.conn.uploads().take(1);
    t.cmd(Cmd::Choke).unwrap();
    assert!(t.queued().is_empty());
    let mut b = second_leecher(&mut t, 2, true);
    for p in [0, 1] {
        b.handle(Message::Request(block(p, 0)), t.now, &mut t.st)
            .unwrap();
        assert!(rejects(&sent(&mut b)).is_empty());
    }
}

/// A seed whose first leecher got and announced pieces 0 to 9, and a
/// second leecher 10.0.0.2 that has nothing (it will be pointed at
/// pieces never sent when it asks for those ten).
fn seed_with_ten_pieces_out_and_a_second_leecher() -> (T, Connection) {
    let mut t = T::seed_unchoking_a_fast_leecher();
    for p in 0..10 {
        t.recv(Message::Request(block(p, 0))).unwrap();
        t.recv(Message::Have(p)).unwrap();
    }
    let b = second_leecher(&mut t, 2, true);
    (t, b)
}

#[test]
fn a_peer_that_passes_over_suggestions_is_no_longer_turned_away_for_them() {
    // Like a leecher that wants only some files: it never asks for what we
    // suggest, so after a few it gets what it asks for.
    let (mut t, mut b) = seed_with_ten_pieces_out_and_a_second_leecher();
    let mut now = t.now;
    let mut served_at = None;
    for p in 0..10u32 {
        now += Duration::from_secs(2);
        b.handle(Message::Request(block(p, 0)), now, &mut t.st)
            .unwrap();
        if rejects(&sent(&mut b)).is_empty() {
            served_at = Some(p);
            break;
        }
    }
    assert_eq!(served_at, Some(u32::from(MAX_DECLINED)));
}

#[test]
fn a_peer_that_takes_our_suggestions_late_is_still_pointed_at_them() {
    // Like a leecher that first finishes pieces it started with others:
    // it asks for another piece a while after each suggestion, and then
    // for the suggestion. It does take them, so it is never counted as
    // one that passes them over (compare the test above).
    let (mut t, mut b) = seed_with_ten_pieces_out_and_a_second_leecher();
    let mut now = t.now;
    let mut suggested = None;
    for p in 0..10u32 {
        now += Duration::from_secs(2);
        b.handle(Message::Request(block(p, 0)), now, &mut t.st)
            .unwrap();
        let msgs = sent(&mut b);
        assert_eq!(rejects(&msgs), [block(p, 0)], "round {p}");
        if let Some(q) = suggested.take() {
            b.handle(Message::Request(block(q, 0)), now, &mut t.st)
                .unwrap();
            assert!(rejects(&sent(&mut b)).is_empty(), "round {p}");
            b.handle(Message::Have(q), now, &mut t.st).unwrap();
        }
        suggested = msgs.iter().find_map(|m| match m {
            Message::SuggestPiece(q) => Some(*q),
            _ => None,
        });
        assert!(suggested.is_some(), "round {p}: {msgs:?}");
    }
}

#[test]
fn without_fast_a_seed_serves_every_asker() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    t.recv(Message::Request(block(0, 0))).unwrap();
    let mut b = second_leecher(&mut t, 2, false);
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(sent(&mut b), []);
    assert_eq!(b.uploads().lock().len(), 1);
}

#[test]
fn a_piece_on_its_way_to_one_peer_is_not_sent_to_another_until_it_arrived() {
    // The second peer has every piece but 0, which is on its way to the
    // first: nothing less sent to offer, but 0 will soon be at the first
    // peer, so the second is turned away (no suggestion)...
    let mut t = T::seed_unchoking_a_fast_leecher();
    t.recv(Message::Request(block(0, 0))).unwrap();
    let (mut b, _rx) = connect(&mut t.st, 2, features(true, false), false, None, t.now);
    let mut bits = Bitfield::new(PIECES);
    (1..PIECES).for_each(|i| {
        bits.set(i);
    });
    b.handle(
        Message::Bitfield(bits.as_bytes().to_vec()),
        t.now,
        &mut t.st,
    )
    .unwrap();
    b.command(Cmd::Unchoke, t.now, &mut t.st).unwrap();
    b.take_output();
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(sent(&mut b), [Message::RejectRequest(block(0, 0))]);
    // ...until the first announces it: then nobody holds it back (it may
    // not share it with this peer).
    t.recv(Message::Have(0)).unwrap();
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    assert!(rejects(&sent(&mut b)).is_empty());
    assert_eq!(b.uploads().lock().len(), 1);
}

#[test]
fn once_every_piece_went_out_second_copies_of_arrived_pieces_are_not_held_back() {
    // Every piece went to the first peer; only 3 arrived yet. The first
    // copies still on their way are queued already: holding every second
    // copy back now would only leave the link to the few connections
    // carrying them. So the second peer gets 3, but not 4, whose first copy
    // its receiver will soon pass on.
    let mut t = T::seed_unchoking_a_fast_leecher();
    for p in 0..PIECES as u32 {
        t.recv(Message::Request(block(p, 0))).unwrap();
    }
    assert!(rejects(&t.out()).is_empty());
    t.recv(Message::Have(3)).unwrap();
    let mut b = second_leecher(&mut t, 2, true);
    b.handle(Message::Request(block(3, 0)), t.now, &mut t.st)
        .unwrap();
    assert!(rejects(&sent(&mut b)).is_empty());
    assert_eq!(b.uploads().lock().len(), 1);
    b.handle(Message::Request(block(4, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(rejects(&sent(&mut b)), [block(4, 0)]);
    // A choke gives back the pieces not yet sent to the first peer (the
    // writer took none): then a third copy of 3 waits again.
    t.cmd(Cmd::Choke).unwrap();
    let mut c = second_leecher(&mut t, 3, true);
    c.handle(Message::Request(block(3, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(rejects(&sent(&mut c)), [block(3, 0)]);
}

#[test]
fn pieces_that_went_to_a_peer_that_left_are_not_counted_or_waited_for() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    t.recv(Message::Request(block(0, 0))).unwrap();
    t.recv(Message::Request(block(1, 0))).unwrap();
    t.recv(Message::Have(1)).unwrap();
    t.conn.closed(&mut t.st);
    let spread = t.st.spread.as_ref().unwrap();
    assert_eq!((spread.copies(0), spread.copies(1)), (0, 0));
    // The next downloader gets both at once, with or without the first
    // one's have (a seed serving one downloader after another).
    let st = &mut t.st;
    st.picker.remove_peer(t.conn.key(), t.conn.bitfield());
    let mut b = second_leecher(&mut t, 2, true);
    for p in [0, 1] {
        b.handle(Message::Request(block(p, 0)), t.now, &mut t.st)
            .unwrap();
    }
    assert!(rejects(&sent(&mut b)).is_empty());
    assert_eq!(b.uploads().lock().len(), 2);
}

#[test]
fn a_suggested_piece_is_asked_for_first() {
    let mut t = T::new(false, features(true, false));
    t.recv(Message::SuggestPiece(17)).unwrap();
    t.recv(Message::SuggestPiece(23)).unwrap();
    let asked = t.seeded_and_unchoked();
    assert_eq!(
        &asked[..4],
        [block(17, 0), block(17, 1), block(23, 0), block(23, 1)]
    );
}

#[test]
fn a_started_piece_is_finished_before_a_suggested_one_is_begun() {
    // Piece 5 is started: one block asked of another peer, the other
    // asked of nobody yet. A seed that suggests other pieces (it turns
    // requests away toward them) must not leave 5 short of that block: a
    // piece nobody finishes is one nobody can share.
    let mut t = T::new(false, features(true, false));
    let other = t.conn.key() + 1000;
    assert_eq!(t.st.picker.pick_piece(other, 5, 1), [block(5, 0)]);
    t.recv(Message::SuggestPiece(17)).unwrap();
    t.recv(Message::SuggestPiece(23)).unwrap();
    let asked = t.seeded_and_unchoked();
    assert_eq!(
        &asked[..5],
        [
            block(5, 1),
            block(17, 0),
            block(17, 1),
            block(23, 0),
            block(23, 1)
        ]
    );
}

/// What a choke grants is bounded: a request cancelled is not a piece
/// begun, at most MAX_GRANTED pieces are granted (those asked for the
/// most), the others count as not sent; a grant whose rest is not asked
/// for within GRANT_WAIT (Transmission ignores `allowed_fast`) ends, and
/// its piece counts as not sent too.
#[test]
fn a_choke_grants_at_most_a_few_begun_pieces_for_a_while() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    let copies = |t: &T, p| t.st.spread.as_ref().unwrap().copies(p);
    // Piece 0 asked for and cancelled; 1..=6 begun (the writer took their
    // blocks, so that none is dropped at the choke).
    t.recv(Message::Request(block(0, 0))).unwrap();
    t.recv(Message::Cancel(block(0, 0))).unwrap();
    for p in 1..=6 {
        t.recv(Message::Request(block(p, 0))).unwrap();
    }
    t.conn.uploads().take(100);
    t.out();
    for p in 1..=6 {
        assert_eq!(copies(&t, p), 1);
    }
    t.cmd(Cmd::Choke).unwrap();
    let granted: Vec<u32> = t
        .out()
        .into_iter()
        .filter_map(|m| match m {
            Message::AllowedFast(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(granted.len(), MAX_GRANTED, "{granted:?}");
    assert!(!granted.contains(&0));
    let given_back: Vec<u32> = (1..=6).filter(|p| !granted.contains(p)).collect();
    for &p in &given_back {
        assert_eq!(copies(&t, p), 0, "piece {p}");
    }
    // A granted piece's rest is served within GRANT_WAIT...
    let first = granted[0];
    t.recv(Message::Request(block(first, 1))).unwrap();
    assert!(rejects(&t.out()).is_empty());
    // ... the others', asked for too late, are not: those pieces count as
    // not sent.
    t.pass(GRANT_WAIT).unwrap();
    let late = granted[1];
    t.recv(Message::Request(block(late, 1))).unwrap();
    assert_eq!(rejects(&t.out()), [block(late, 1)]);
    assert_eq!(copies(&t, late), 0);
    assert_eq!(copies(&t, first), 1);
}

/// At most MAX_BEGUN pieces asked for in part are remembered: the oldest
/// not granted makes room; while every one is granted, a new one is not
/// remembered.
#[test]
fn pieces_begun_are_bounded_and_granted_ones_kept() {
    let mut t = T::seed_unchoking_a_fast_leecher();
    for p in 0..=MAX_BEGUN as u32 {
        t.recv(Message::Request(block(p, 0))).unwrap();
    }
    assert!(rejects(&t.out()).is_empty());
    let begun: Vec<u32> = t.conn.begun.iter().map(|e| e.0).collect();
    assert_eq!(begun, (1..=MAX_BEGUN as u32).collect::<Vec<_>>());
    // Every one granted (as a choke would, past MAX_GRANTED): the next
    // piece is not remembered, and none is forgotten.
    t.conn.granted = begun.clone();
    t.recv(Message::Request(block(MAX_BEGUN as u32 + 1, 0)))
        .unwrap();
    let now: Vec<u32> = t.conn.begun.iter().map(|e| e.0).collect();
    assert_eq!(now, begun);
}

/// A peer that grants us a piece at every choke (a rotating seed) would
/// fill our allowed-fast list: pieces we have since verified make room.
#[test]
fn allowed_fast_pieces_we_have_make_room_for_new_ones() {
    let pieces = fast::MAX_ALLOWED_FAST_IN + 10;
    let len = pieces * 32 * 1024 - 1000;
    let (info, _) = crate::storage::tests::torrent(&[("", len)], 32 * 1024);
    let mut have = Bitfield::new(info.piece_count());
    for p in 0..fast::MAX_ALLOWED_FAST_IN {
        have.set(p);
    }
    let st = State::new(info, have, None, 4, false);
    let mut t = T::with(st, features(true, false), false);
    t.out();
    for p in 0..fast::MAX_ALLOWED_FAST_IN as u32 {
        t.recv(Message::AllowedFast(p)).unwrap();
    }
    assert_eq!(t.conn.allowed_in.len(), fast::MAX_ALLOWED_FAST_IN);
    let new = fast::MAX_ALLOWED_FAST_IN as u32 + 3;
    t.recv(Message::AllowedFast(new)).unwrap();
    assert_eq!(t.conn.allowed_in, [new]);
}

#[test]
fn the_rest_of_a_piece_asked_for_after_a_choke_is_served() {
    // The choke grants the piece being sent: the rest of it, asked for
    // after the choke, is served, and the piece still counts as on its way
    // there. A piece it got whole is not granted, and asking for it again
    // changes no count (a peer cannot talk the counts down).
    let mut t = T::seed_unchoking_a_fast_leecher();
    // Piece 1 went whole; then piece 0's first block, and the choke.
    t.recv(Message::Request(block(1, 0))).unwrap();
    t.recv(Message::Request(block(1, 1))).unwrap();
    t.recv(Message::Request(block(0, 0))).unwrap();
    t.conn.uploads().take(3);
    t.cmd(Cmd::Choke).unwrap();
    let msgs = t.out();
    assert!(msgs.contains(&Message::AllowedFast(0)), "{msgs:?}");
    assert!(!msgs.contains(&Message::AllowedFast(1)), "{msgs:?}");
    let copies = |t: &T, p| t.st.spread.as_ref().unwrap().copies(p);
    t.recv(Message::Request(block(1, 0))).unwrap();
    assert_eq!(rejects(&t.out()), [block(1, 0)]);
    t.recv(Message::Request(block(0, 1))).unwrap();
    assert!(rejects(&t.out()).is_empty());
    assert_eq!(t.queued(), [block(0, 1)]);
    assert_eq!((copies(&t, 0), copies(&t, 1)), (1, 1));
    let mut b = second_leecher(&mut t, 2, true);
    b.handle(Message::Request(block(0, 0)), t.now, &mut t.st)
        .unwrap();
    assert_eq!(rejects(&sent(&mut b)), [block(0, 0)]);
}

#[test]
fn suggestions_out_of_range_are_ignored() {
    let mut t = T::new(false, features(true, false));
    t.recv(Message::SuggestPiece(u32::MAX)).unwrap();
    t.recv(Message::SuggestPiece(3)).unwrap();
}

#[test]
fn have_all_rules() {
    // 'have' after 'have all' is nothing new.
    let mut t = T::new(false, features(true, false));
    t.recv(Message::HaveAll).unwrap();
    t.out();
    t.recv(Message::Have(3)).unwrap();
    assert!(t.out().is_empty());
    assert_eq!(t.st.picker.availability(3), 1);
    // 'have all' / 'have none' after a bitfield or a have: a violation.
    for first in [Message::Have(1), Message::HaveAll] {
        for late in [Message::HaveAll, Message::HaveNone] {
            let mut t = T::new(false, features(true, false));
            t.recv(first.clone()).unwrap();
            let r = t.recv(late.clone());
            assert!(
                matches!(r, Err(Close::Violation(Violation::LateHaveAll))),
                "{first:?} then {late:?}: {r:?}"
            );
        }
    }
    // A 'have' out of range ends the connection.
    let mut t = T::new(false, features(true, false));
    let r = t.recv(Message::Have(PIECES as u32));
    assert!(matches!(
        r,
        Err(Close::Violation(Violation::HaveOutOfRange(_)))
    ));
    // Two seeds have nothing to say to each other.
    let mut t = T::new(true, features(true, false));
    assert!(matches!(t.recv(Message::HaveAll), Err(Close::BothSeeds)));
}

#[test]
fn a_bad_bitfield_ends_the_connection_and_a_late_one_counts_as_haves() {
    let mut t = T::new(false, features(false, false));
    let r = t.recv(Message::Bitfield(vec![0xff]));
    assert!(matches!(r, Err(Close::Violation(Violation::Bitfield(_)))));
    let mut t = T::new(false, features(false, false));
    let mut bits = Bitfield::new(PIECES);
    bits.set(1);
    t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    bits.set(2);
    t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    assert_eq!(t.st.picker.availability(1), 1);
    assert_eq!(t.st.picker.availability(2), 1);
}

// ---- Extension protocol -------------------------------------------------

#[test]
fn the_peers_reqq_bounds_our_pipeline_and_its_name_is_kept() {
    let mut t = T::new(false, features(true, true));
    t.out();
    let h = ExtHandshake {
        client: Some("libtorrent/2.0.8".into()),
        reqq: Some(3),
        ..ExtHandshake::default()
    };
    t.recv(Message::Extended(0, h.encode())).unwrap();
    assert_eq!(
        t.st.peers[&t.conn.key()].client.as_deref(),
        Some("libtorrent/2.0.8")
    );
    assert_eq!(t.conn.ext().unwrap().reqq, Some(3));
    let reqs = t.seeded_and_unchoked();
    assert_eq!(reqs.len(), 3);
    // Unknown extended messages are ignored.
    t.recv(Message::Extended(42, b"whatever".to_vec())).unwrap();
}

#[test]
fn a_malformed_extended_handshake_ends_the_connection() {
    for bad in [&b"garbage"[..], b"le", b"d1:m3:abce", b""] {
        let mut t = T::new(false, features(true, true));
        let r = t.recv(Message::Extended(0, bad.to_vec()));
        assert!(
            matches!(r, Err(Close::Violation(Violation::ExtHandshake(_)))),
            "{bad:?}: {r:?}"
        );
    }
}

// ---- Time -----------------------------------------------------------------

#[test]
fn a_silent_peer_is_snubbed_then_dropped() {
    let mut t = T::new(false, features(false, false));
    t.out();
    let reqs = t.seeded_and_unchoked();
    assert!(!reqs.is_empty());
    t.pass(Duration::from_secs(30)).unwrap();
    assert_eq!(t.conn.inflight().len(), reqs.len());
    t.pass(Duration::from_secs(31)).unwrap();
    assert!(t.conn.inflight().is_empty(), "snubbed: requests released");
    // Snubbed, it gets one request at a time.
    t.cmd(Cmd::Poke).unwrap();
    assert_eq!(requests(&t.out()).len(), 1);
    // Bytes keep the idle clock from running out; silence does not.
    t.conn.received_bytes(t.now);
    t.pass(Duration::from_secs(100)).unwrap();
    assert!(matches!(t.pass(Duration::from_secs(51)), Err(Close::Idle)));
}

#[test]
fn endgame_cancels_go_to_the_other_requesters() {
    let mut st = test_state(1, false);
    let (other, mut other_rx) = add_peer(&mut st, 20);
    let mut t = T::with(st, features(false, false), false);
    t.out();
    let reqs = t.seeded_and_unchoked();
    assert_eq!(reqs.len(), 2);
    // The other peer asks for the same blocks (endgame).
    let again =
        t.st.picker
            .pick(other, &all_blocks_one(), 10, &mut rand::rng());
    assert!(!again.is_empty());
    t.recv(piece(again[0])).unwrap();
    let mut cancelled = Vec::new();
    while let Ok(c) = other_rx.try_recv() {
        if let Cmd::Cancel(b) = c {
            cancelled.push(b);
        }
    }
    assert_eq!(cancelled, [again[0]]);
    // The interest command our own choker sent (if any) is harmless.
    while t.rx.try_recv().is_ok() {}
}

fn all_blocks_one() -> Bitfield {
    let mut b = Bitfield::new(1);
    b.set(0);
    b
}

#[test]
fn a_rejected_piece_is_not_asked_of_that_peer_again_until_it_unchokes() {
    let mut t = T::new(false, features(true, false));
    t.out();
    let reqs = t.seeded_and_unchoked();
    for b in &reqs {
        t.recv(Message::RejectRequest(*b)).unwrap();
    }
    let again = requests(&t.out());
    let rejected: HashSet<u32> = reqs.iter().map(|b| b.index).collect();
    assert!(
        again.iter().all(|b| !rejected.contains(&b.index)),
        "rejected pieces asked again: {again:?}"
    );
    // A new unchoke: everything may be asked again.
    t.recv(Message::Choke).unwrap();
    t.recv(Message::Unchoke).unwrap();
    assert!(t.conn.rejected.is_empty());
}

#[test]
fn a_piece_rejected_by_a_peer_that_still_unchokes_us_is_asked_again_later() {
    // A seed may turn a request away for now (it prefers to send a piece
    // fewer peers have); when that piece is all we still need, we must
    // come back for it, or the download stalls.
    let mut st = test_state(PIECES, false);
    let mut have = Bitfield::new(PIECES);
    (1..PIECES).for_each(|i| {
        have.set(i);
    });
    st.picker = crate::picker::Picker::new(st.info.piece_length(), st.info.total_length(), have);
    let mut t = T::with(st, features(true, false), false);
    t.out();
    let reqs = t.seeded_and_unchoked();
    assert!(
        !reqs.is_empty() && reqs.iter().all(|b| b.index == 0),
        "{reqs:?}"
    );
    for b in &reqs {
        t.recv(Message::RejectRequest(*b)).unwrap();
    }
    assert_eq!(requests(&t.out()), []);
    t.pass(REJECTED_RETRY - Duration::from_millis(500)).unwrap();
    assert_eq!(requests(&t.out()), []);
    t.pass(Duration::from_millis(500)).unwrap();
    assert_eq!(requests(&t.out()), reqs);
}

#[test]
fn a_snubbed_peer_cannot_hold_its_one_block_forever() {
    let mut t = T::new(false, features(false, false));
    t.out();
    t.seeded_and_unchoked();
    t.pass(Duration::from_secs(61)).unwrap();
    t.cmd(Cmd::Poke).unwrap();
    let one = requests(&t.out());
    assert_eq!(one.len(), 1);
    // It keeps the connection alive but never sends that block.
    t.conn.received_bytes(t.now);
    t.pass(Duration::from_secs(61)).unwrap();
    assert!(t.conn.inflight().is_empty(), "released again");
}

#[test]
fn a_flood_of_chatter_ends_the_connection() {
    let mut t = T::new(false, features(true, true));
    t.recv(Message::HaveAll).unwrap();
    // A burst is fine, and so is a steady 20 a second, for as long as
    // the peer likes (a minute here).
    for i in 0..CHATTER_BURST {
        let m = if i % 2 == 0 {
            Message::Unchoke
        } else {
            Message::Choke
        };
        t.recv(m).unwrap();
    }
    for _ in 0..60 * CHATTER_RATE {
        t.now += Duration::from_millis(1000 / CHATTER_RATE);
        t.recv(Message::KeepAlive).unwrap();
    }
    // Then 500 more at once, with no time passing: over the allowance.
    let flood = (0..=CHATTER_BURST)
        .map(|i| {
            t.recv(if i % 2 == 0 {
                Message::Interested
            } else {
                Message::NotInterested
            })
        })
        .find_map(Result::err);
    assert!(
        matches!(flood, Some(Close::Violation(Violation::Chatter))),
        "{flood:?}"
    );
}

#[test]
fn repeated_bitfields_are_not_chatter() {
    // aria2 sends its whole bitfield again instead of 'have's, often.
    let mut t = T::new(false, features(false, false));
    let mut bits = Bitfield::new(PIECES);
    t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    for i in 0..CHATTER_BURST as usize * 2 {
        bits.set(i % PIECES);
        t.recv(Message::Bitfield(bits.as_bytes().to_vec())).unwrap();
    }
}

#[test]
fn a_repeated_bitfield_counts_as_its_new_pieces_at_once() {
    let mut t = T::new(false, features(false, false));
    t.recv(Message::Bitfield(Bitfield::new(PIECES).as_bytes().to_vec()))
        .unwrap();
    t.recv(Message::Unchoke).unwrap();
    assert!(requests(&t.out()).is_empty(), "it has nothing yet");
    let mut all = Bitfield::new(PIECES);
    for i in 0..PIECES {
        all.set(i);
    }
    t.recv(Message::Bitfield(all.as_bytes().to_vec())).unwrap();
    let out = t.out();
    assert!(out.contains(&Message::Interested), "{out:?}");
    // One batch of requests for the whole news, not one pass per piece.
    let asked = requests(&out);
    assert!(!asked.is_empty() && asked.len() <= 32, "{}", asked.len());
    assert_eq!(t.st.peers[&t.conn.key()].pieces, PIECES);
}

#[test]
fn a_have_of_a_piece_we_have_asks_nothing_of_the_picker() {
    let mut t = T::new(true, features(false, false));
    t.recv(Message::Bitfield(Bitfield::new(PIECES).as_bytes().to_vec()))
        .unwrap();
    t.recv(Message::Unchoke).unwrap();
    t.out();
    for i in 0..PIECES as u32 - 1 {
        t.recv(Message::Have(i)).unwrap();
    }
    assert!(t.out().is_empty());
    assert_eq!(t.st.peers[&t.conn.key()].pieces, PIECES - 1);
}

/// A peer's extended handshake offering ut_metadata as id 7.
fn asks_metadata(t: &mut T) {
    let mut h = ExtHandshake::default();
    h.extensions.insert(metadata::NAME.into(), 7);
    t.recv(Message::Extended(0, h.encode())).unwrap();
}

fn metadata_replies(msgs: &[Message]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended(7, p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn metadata_is_served_with_its_size_and_rejected_past_the_end() {
    let mut t = T::new(true, features(true, true));
    let h = ext_handshake(&t.out());
    let raw = t.st.info.raw_bytes().to_vec();
    assert_eq!(h.metadata_size, Some(raw.len() as u64));
    assert_eq!(
        h.extensions.get(metadata::NAME),
        Some(&extension::UT_METADATA_ID)
    );
    // Before its extended handshake it cannot be answered: ignored.
    let req = metadata::MetaMsg::Request(0).encode();
    t.recv(Message::Extended(extension::UT_METADATA_ID, req.clone()))
        .unwrap();
    assert!(t.out().is_empty());
    asks_metadata(&mut t);
    t.recv(Message::Extended(extension::UT_METADATA_ID, req.clone()))
        .unwrap();
    let r = metadata_replies(&t.out());
    assert_eq!(
        metadata::MetaMsg::decode(&r[0]).unwrap(),
        metadata::MetaMsg::Data {
            piece: 0,
            total_size: Some(raw.len() as u64),
            data: &raw
        }
    );
    let past = metadata::MetaMsg::Request(1).encode();
    t.recv(Message::Extended(extension::UT_METADATA_ID, past))
        .unwrap();
    let r = metadata_replies(&t.out());
    assert_eq!(
        metadata::MetaMsg::decode(&r[0]).unwrap(),
        metadata::MetaMsg::Reject(1)
    );
    // Asking again and again: rejected after a bound.
    for _ in 0..100 {
        t.recv(Message::Extended(extension::UT_METADATA_ID, req.clone()))
            .unwrap();
    }
    let r = metadata_replies(&t.out());
    assert_eq!(r.len(), 100);
    assert_eq!(
        metadata::MetaMsg::decode(r.last().unwrap()).unwrap(),
        metadata::MetaMsg::Reject(0)
    );
    // A malformed one ends the connection.
    let r = t.recv(Message::Extended(
        extension::UT_METADATA_ID,
        b"i1e".to_vec(),
    ));
    assert!(matches!(r, Err(Close::Violation(Violation::Metadata(_)))));
}

#[test]
fn a_private_torrents_metadata_is_never_offered_or_served() {
    let info = Info::from_bytes(
        b"d6:lengthi10e4:name1:a12:piece lengthi16384e6:pieces20:xxxxxxxxxxxxxxxxxxxx7:privatei1ee",
    )
    .unwrap();
    assert!(info.is_private());
    let mut have = Bitfield::new(1);
    have.set(0);
    let st = State::new(Arc::new(info), have, None, 4, false);
    let mut t = T::with(st, features(true, true), false);
    let h = ext_handshake(&t.out());
    assert_eq!(h.metadata_size, None);
    assert!(h.extensions.is_empty(), "{:?}", h.extensions);
    asks_metadata(&mut t);
    let req = metadata::MetaMsg::Request(0).encode();
    t.recv(Message::Extended(extension::UT_METADATA_ID, req))
        .unwrap();
    assert!(t.out().is_empty());
}

/// The ut_pex messages among `msgs` (sent to the peer as id `id`).
fn pex_sent(msgs: &[Message], id: u8) -> Vec<PexMessage> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Extended(i, payload) if *i == id => Some(PexMessage::decode(payload).unwrap()),
            _ => None,
        })
        .collect()
}

/// Admits another peer to `st`, as `Shared::register` would.
fn join(st: &mut State, addr: &str, id: u8, outgoing: bool) -> PeerKey {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(rx);
    st.admit(
        addr.parse().unwrap(),
        [id; 20],
        outgoing,
        tx,
        Instant::now(),
        1000,
        1000,
    )
    .unwrap()
}

/// The peer's extended handshake, offering ut_pex as `id`.
fn offers_pex(t: &mut T, id: u8) {
    let mut h = ExtHandshake::default();
    h.extensions.insert(pex::EXTENSION_NAME.into(), id);
    t.recv(Message::Extended(0, h.encode())).unwrap();
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

#[test]
fn pex_tells_the_peers_we_know_a_listening_address_of_at_most_once_a_minute() {
    let mut t = T::new(true, features(true, true));
    let h = ext_handshake(&t.out());
    assert_eq!(
        h.extensions.get(pex::EXTENSION_NAME),
        Some(&extension::UT_PEX_ID)
    );
    // One we dialed (reachable), one that dialed us and named its port,
    // one that dialed us and did not: that one cannot be passed on.
    let dialed = join(&mut t.st, "10.0.1.1:7000", 21, true);
    let told_port = join(&mut t.st, "10.0.1.2:50000", 22, false);
    t.st.heard_ext_handshake(told_port, Some(6999), true);
    join(&mut t.st, "10.0.1.3:50001", 23, false);
    t.st.peers.get_mut(&dialed).unwrap().seed = true;

    offers_pex(&mut t, 9);
    t.pass(Duration::from_secs(1)).unwrap();
    let sent = pex_sent(&t.out(), 9);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].added,
        vec![
            (
                addr("10.0.1.1:7000"),
                pex::FLAG_CONNECTABLE | pex::FLAG_SEED
            ),
            (addr("10.0.1.2:6999"), pex::FLAG_ENCRYPTION),
        ]
    );
    assert!(sent[0].dropped.is_empty());

    // News comes only a minute after the last message.
    let later = join(&mut t.st, "10.0.1.4:7001", 24, true);
    t.st.peers.remove(&dialed);
    for _ in 0..59 {
        t.pass(Duration::from_secs(1)).unwrap();
        assert!(pex_sent(&t.out(), 9).is_empty());
    }
    t.pass(Duration::from_secs(1)).unwrap();
    let sent = pex_sent(&t.out(), 9);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].added,
        vec![(addr("10.0.1.4:7001"), pex::FLAG_CONNECTABLE)]
    );
    assert_eq!(sent[0].dropped, vec![addr("10.0.1.1:7000")]);
    // No news: nothing, also after a minute.
    for _ in 0..70 {
        t.pass(Duration::from_secs(1)).unwrap();
        assert!(pex_sent(&t.out(), 9).is_empty());
    }
    let _ = later;
}

#[test]
fn what_we_send_over_ten_minutes_of_churn_never_breaks_libtorrents_rule() {
    let mut t = T::new(true, features(true, true));
    t.out();
    // The peer advertises ut_pex, then re-sends its handshake: neither
    // resets our clock.
    offers_pex(&mut t, 3);
    let mut receiver = PexIn::new();
    let mut sent = 0;
    let mut keys = Vec::new();
    for s in 0..600u32 {
        if s % 5 == 0 {
            let n = (s / 5) as u8;
            keys.push(join(&mut t.st, &format!("10.0.2.{n}:6881"), 100 + n, true));
            if keys.len() > 4 {
                let k = keys.remove(0);
                t.st.peers.remove(&k);
            }
        }
        if s % 50 == 7 {
            offers_pex(&mut t, 3);
        }
        t.conn.received_bytes(t.now);
        t.pass(Duration::from_secs(1)).unwrap();
        for m in t.out() {
            if let Message::Extended(3, payload) = m {
                assert_eq!(receiver.receive(t.now, payload.len()), PexVerdict::Use);
                let msg = PexMessage::decode(&payload).unwrap();
                assert!(msg.added.len() <= pex::MAX_PEX_ADDED);
                sent += 1;
            }
        }
    }
    // The first at once, then one a minute.
    assert!((10..=11).contains(&sent), "{sent} messages");
}

#[test]
fn pex_peers_become_candidates_and_floods_or_huge_messages_end_the_connection() {
    let mut t = T::new(false, features(true, true));
    t.out();
    let msg = |addrs: &[&str]| PexMessage {
        added: addrs.iter().map(|a| (addr(a), 0)).collect(),
        dropped: vec![],
    };
    // Ours: already connected, not learned again.
    join(&mut t.st, "10.0.3.9:6881", 40, true);
    t.recv(Message::Extended(
        extension::UT_PEX_ID,
        msg(&["10.0.3.1:6881", "10.0.3.2:6881", "10.0.3.9:6881"]).encode(),
    ))
    .unwrap();
    assert_eq!(
        t.st.candidate_addrs(),
        vec![(addr("10.0.3.1:6881"), true), (addr("10.0.3.2:6881"), true)]
    );
    // Three within a minute are fine (libtorrent's rule), a fourth is not.
    for i in 3..5 {
        t.now += Duration::from_secs(1);
        t.recv(Message::Extended(
            extension::UT_PEX_ID,
            msg(&[&format!("10.0.3.{i}:6881")]).encode(),
        ))
        .unwrap();
    }
    assert_eq!(t.st.candidate_addrs().len(), 4);
    t.now += Duration::from_secs(1);
    let r = t.recv(Message::Extended(
        extension::UT_PEX_ID,
        msg(&["10.0.3.5:6881"]).encode(),
    ));
    assert!(
        matches!(
            r,
            Err(Close::Violation(Violation::Pex(
                pex::PexViolation::TooFrequent
            )))
        ),
        "{r:?}"
    );
    assert_eq!(
        t.st.candidate_addrs().len(),
        4,
        "the flood's peers are ignored"
    );

    // Over the size bound: the connection ends before it is parsed.
    let mut t = T::new(false, features(true, true));
    let huge = vec![b'x'; pex::MAX_PEX_MESSAGE + 1];
    let r = t.recv(Message::Extended(extension::UT_PEX_ID, huge));
    assert!(matches!(
        r,
        Err(Close::Violation(Violation::Pex(
            pex::PexViolation::TooLarge { .. }
        )))
    ));
    // Not a dictionary: ends it too, as libtorrent does.
    let mut t = T::new(false, features(true, true));
    let r = t.recv(Message::Extended(extension::UT_PEX_ID, b"le".to_vec()));
    assert!(matches!(r, Err(Close::Violation(Violation::PexMessage(_)))));
}

#[test]
fn one_peer_can_make_us_learn_a_bounded_number() {
    let mut t = T::new(false, features(true, true));
    t.out();
    for round in 0..10u32 {
        let added = (0..200u32)
            .map(|i| {
                let n = round * 200 + i;
                (
                    std::net::SocketAddr::from(([10, 4, (n >> 8) as u8, n as u8], 6881)),
                    0,
                )
            })
            .collect();
        let m = PexMessage {
            added,
            dropped: vec![],
        };
        t.now += Duration::from_secs(61);
        t.recv(Message::Extended(extension::UT_PEX_ID, m.encode()))
            .unwrap();
    }
    assert_eq!(t.st.candidate_addrs().len(), pex::MAX_LEARNED_PER_PEER);
}

#[test]
fn a_private_torrent_neither_offers_nor_uses_pex() {
    let info = Info::from_bytes(
        b"d6:lengthi10e4:name1:a12:piece lengthi16384e6:pieces20:xxxxxxxxxxxxxxxxxxxx7:privatei1ee",
    )
    .unwrap();
    let mut have = Bitfield::new(1);
    have.set(0);
    let mut st = State::new(Arc::new(info), have, None, 4, false);
    join(&mut st, "10.0.5.1:6881", 50, true);
    let mut t = T::with(st, features(true, true), false);
    assert!(ext_handshake(&t.out()).extensions.is_empty());
    offers_pex(&mut t, 9);
    let m = PexMessage {
        added: vec![(addr("10.0.5.2:6881"), 0)],
        dropped: vec![],
    };
    for _ in 0..5 {
        t.recv(Message::Extended(extension::UT_PEX_ID, m.encode()))
            .unwrap();
    }
    t.pass(Duration::from_secs(61)).unwrap();
    assert!(pex_sent(&t.out(), 9).is_empty());
    assert!(t.st.candidate_addrs().is_empty());
}

#[test]
fn a_peer_that_does_not_offer_pex_is_sent_none() {
    let mut t = T::new(true, features(true, true));
    t.out();
    join(&mut t.st, "10.0.6.1:6881", 60, true);
    let mut h = ExtHandshake::default();
    h.extensions.insert(metadata::NAME.into(), 3);
    t.recv(Message::Extended(0, h.encode())).unwrap();
    t.pass(Duration::from_secs(61)).unwrap();
    assert!(t
        .out()
        .iter()
        .all(|m| !matches!(m, Message::Extended(i, _) if *i != 0 && *i != 3)));
    // Withdrawn by a later handshake: no more.
    offers_pex(&mut t, 9);
    t.pass(Duration::from_secs(1)).unwrap();
    assert_eq!(pex_sent(&t.out(), 9).len(), 1);
    t.recv(Message::Extended(0, h.encode())).unwrap();
    join(&mut t.st, "10.0.6.2:6881", 61, true);
    t.pass(Duration::from_secs(61)).unwrap();
    assert!(pex_sent(&t.out(), 9).is_empty());
    // Withdrawn and offered again, over and over: still once a minute.
    let mut sent = 0;
    for _ in 0..30 {
        offers_pex(&mut t, 9);
        t.conn.received_bytes(t.now);
        t.pass(Duration::from_secs(1)).unwrap();
        sent += pex_sent(&t.out(), 9).len();
        t.recv(Message::Extended(0, h.encode())).unwrap();
    }
    assert!(sent <= 1, "{sent} messages in 30 s");
}

#[test]
fn the_dht_port_is_sent_and_a_peers_node_taken_once() {
    let mut t = T::with_dht(
        test_state(PIECES, true),
        features(true, true),
        false,
        Some(7000),
    );
    assert!(t.out().contains(&Message::Port(7000)));
    t.recv(Message::Port(0)).unwrap();
    assert_eq!(t.conn.take_dht_node(), None, "port 0 is nobody's node");
    let mut t = T::with_dht(
        test_state(PIECES, true),
        features(true, true),
        false,
        Some(7000),
    );
    for p in [6881, 6882, 6883] {
        t.recv(Message::Port(p)).unwrap();
    }
    assert_eq!(t.conn.take_dht_node(), Some(addr("10.0.0.9:6881")));
    assert_eq!(t.conn.take_dht_node(), None, "one node per connection");
    // Without a DHT for this connection: neither sent nor taken.
    let mut t = T::new(true, features(true, true));
    assert!(!t.out().iter().any(|m| matches!(m, Message::Port(_))));
    t.recv(Message::Port(6881)).unwrap();
    assert_eq!(t.conn.take_dht_node(), None);
}

#[test]
fn a_private_torrent_sends_no_dht_port() {
    let info = Info::from_bytes(
        b"d6:lengthi10e4:name1:a12:piece lengthi16384e6:pieces20:xxxxxxxxxxxxxxxxxxxx7:privatei1ee",
    )
    .unwrap();
    let st = State::new(Arc::new(info), Bitfield::new(1), None, 4, false);
    let mut t = T::with_dht(st, features(true, true), false, Some(7000));
    assert!(!t.out().iter().any(|m| matches!(m, Message::Port(_))));
    t.recv(Message::Port(6881)).unwrap();
    assert_eq!(t.conn.take_dht_node(), None);
}
