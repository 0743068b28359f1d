//! Who we upload to — a plain struct (sans-IO), like the picker.
//!
//! Every [`ROUND`] the session calls [`Choker::round`] with every peer: the
//! `slots` interested peers with the best rate are unchoked ("regular"
//! slots), and one more peer gets the optimistic unchoke, rotated every
//! third round (30 s) and drawn at random with newly connected peers three
//! times as likely, so a newcomer with nothing to offer yet gets a start.
//! The rate is what a peer sends us while we download (tit for tat).
//!
//! While we seed, the slots go round instead ([`Choker::rotate`]): a peer
//! that was sent a piece's worth since its unchoke makes room for a
//! waiting one, those sent the least first, and there is no optimistic
//! unchoke (every peer gets turns). So every leecher gets fresh pieces
//! from the seed, each one a piece the whole swarm wants from it: fed to
//! the fastest few, those few were the only ones with pieces to offer,
//! their uplinks full while the others' idled (1 seed + 24 leechers on
//! capped links: the four or five the seed fed were 95 % busy, the rest
//! 50–80 %). A choke grants the pieces being sent (see
//! [`crate::protocol`]), so that none is left half sent.
//!
//! Between rounds [`Choker::fill`] hands free slots to interested peers at
//! once, so a peer that becomes interested does not wait up to 10 s.
//! Uninterested peers are never unchoked: they would not ask anyway.
//!
//! A slot counts as taken only while its peer takes: a peer that is
//! interested but has asked for nothing for [`IDLE`] (everything it lacks
//! from us is already on its way from others, or a seed turned it away)
//! holds a slot that a waiting peer could use. When peers wait, `fill`
//! chokes such idle peers (and unchoked peers that lost interest) to make
//! room, so at most `slots + 1` are unchoked and each of them is busy; a
//! peer choked for idling waits behind the others for [`BENCH`]. On a
//! capped link this is what keeps the upload busy and each piece short.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::picker::PeerKey;

/// Time between choke rounds.
pub const ROUND: Duration = Duration::from_secs(10);
/// Rounds per optimistic rotation.
const OPTIMISTIC_EVERY: u32 = 3;
/// An unchoked peer that took nothing for this long (and was unchoked at
/// least this long ago) is idle: its slot may go to a waiting peer.
pub const IDLE: Duration = Duration::from_millis(1500);
/// While seeding, the shortest turn of a slot: what a new unchoke writes
/// at first fills socket buffers, not the link, so a piece's worth is
/// "sent" within milliseconds (at the start the slots went round a dozen
/// times in the first 0.2 s, each choke granting pieces, and the seed's
/// link was split among them all). Half a second is a piece's time on
/// the testbed's links at a fifth of a 20 Mbit/s seed.
const MIN_TURN: Duration = Duration::from_millis(500);
/// ... and the longest: a peer that takes slowly (or asks and cancels,
/// so that it looks busy) has its turn end after a choke round.
const MAX_TURN: Duration = ROUND;
/// A peer choked for idling is last in line for this long.
const BENCH: Duration = Duration::from_secs(5);

/// One peer as the choker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PeerKey,
    pub interested: bool,
    /// Bytes per second: from it while downloading, to it while seeding.
    pub rate: u64,
    /// Connected within the last optimistic period.
    pub new: bool,
    /// When we last sent it payload or it last asked for some (at the
    /// session's one-second ticks).
    pub busy_at: Option<Instant>,
    /// Payload bytes we have sent it in all.
    pub sent: u64,
}

#[derive(Debug, Clone)]
pub struct Choker {
    slots: usize,
    round: u32,
    optimistic: Option<PeerKey>,
    /// Unchoked peers: when they were unchoked, and what we had sent them
    /// by then ([`Candidate::sent`]).
    unchoked: HashMap<PeerKey, (Instant, u64)>,
    /// While seeding: the bytes a peer is sent per turn ([`Choker::rotate`]).
    quota: Option<u64>,
    /// Peers choked for idling, and when.
    benched: HashMap<PeerKey, Instant>,
}

impl Choker {
    pub fn new(slots: usize) -> Choker {
        Choker {
            slots: slots.max(1),
            round: 0,
            optimistic: None,
            unchoked: HashMap::new(),
            benched: HashMap::new(),
            quota: None,
        }
    }

    /// While seeding, slots go round: a peer that was sent `quota` bytes
    /// since its unchoke, at least [`MIN_TURN`] ago (or that was unchoked
    /// [`MAX_TURN`] ago), makes room for a waiting one, those sent the
    /// least coming first (but peers benched for idling take only free
    /// slots). `None` (downloading): tit for tat.
    pub fn rotate(&mut self, quota: Option<u64>) {
        self.quota = quota;
    }

    pub fn is_unchoked(&self, key: PeerKey) -> bool {
        self.unchoked.contains_key(&key)
    }

    /// Unchoked for [`IDLE`] at least, and neither taking from us nor
    /// asking for anything for that long.
    fn is_idle(&self, p: &Candidate, now: Instant) -> bool {
        self.unchoked
            .get(&p.key)
            .is_some_and(|&(since, _)| now.duration_since(since) >= IDLE)
            && !p.busy_at.is_some_and(|t| now.duration_since(t) < IDLE)
    }

    /// A peer disconnected.
    pub fn remove(&mut self, key: PeerKey) {
        self.unchoked.remove(&key);
        self.benched.remove(&key);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
    }

    /// A full round. Returns the peers to unchoke and to choke now.
    pub fn round<R: Rng>(
        &mut self,
        peers: &[Candidate],
        now: Instant,
        rng: &mut R,
    ) -> (Vec<PeerKey>, Vec<PeerKey>) {
        if self.quota.is_some() {
            self.optimistic = None;
            self.benched.retain(|_, at| now.duration_since(*at) < BENCH);
            return self.fill(peers, now, rng);
        }
        let mut interested: Vec<&Candidate> = peers.iter().filter(|p| p.interested).collect();
        // Best rate first, but peers idle in their slots last (the next
        // `fill` would take a regular slot back from them at once, after
        // choking a busy peer for it); among equals, keep those already
        // unchoked (no pointless churn), then at random.
        interested.sort_by_cached_key(|p| {
            (
                self.is_idle(p, now),
                std::cmp::Reverse(p.rate),
                !self.unchoked.contains_key(&p.key),
                rng.random::<u32>(),
            )
        });
        let mut next: HashSet<PeerKey> =
            interested.iter().take(self.slots).map(|p| p.key).collect();
        let rotate = self.round % OPTIMISTIC_EVERY == 0;
        self.round = self.round.wrapping_add(1);
        let keep = self
            .optimistic
            .filter(|k| !rotate && !next.contains(k) && interested.iter().any(|p| p.key == *k));
        self.optimistic = keep.or_else(|| {
            let pool: Vec<&&Candidate> = interested
                .iter()
                .filter(|p| !next.contains(&p.key))
                .collect();
            let weight = |p: &Candidate| if p.new { 3 } else { 1 };
            let total: u32 = pool.iter().map(|p| weight(p)).sum();
            if total == 0 {
                return None;
            }
            let mut x = rng.random_range(0..total);
            pool.into_iter()
                .find(|p| {
                    let w = weight(p);
                    if x < w {
                        true
                    } else {
                        x -= w;
                        false
                    }
                })
                .map(|p| p.key)
        });
        next.extend(self.optimistic);
        let unchoke: Vec<PeerKey> = next
            .iter()
            .filter(|k| !self.unchoked.contains_key(k))
            .copied()
            .collect();
        let choke: Vec<PeerKey> = self
            .unchoked
            .keys()
            .filter(|k| !next.contains(k))
            .copied()
            .collect();
        self.unchoked.retain(|k, _| next.contains(k));
        for &k in &unchoke {
            let sent = peers.iter().find(|p| p.key == k).map_or(0, |p| p.sent);
            self.unchoked.insert(k, (now, sent));
        }
        self.benched.retain(|_, at| now.duration_since(*at) < BENCH);
        (sorted(unchoke), sorted(choke))
    }

    /// Between rounds: unchoke interested peers while slots are free
    /// (`slots` + the optimistic one), a slot being free unless its peer is
    /// interested and not idle. To keep at most `slots + 1` unchoked, the
    /// peers unchoked in the freed slots displace unchoked ones that lost
    /// interest, then idle ones. Returns the peers to unchoke and to choke.
    pub fn fill<R: Rng>(
        &mut self,
        peers: &[Candidate],
        now: Instant,
        rng: &mut R,
    ) -> (Vec<PeerKey>, Vec<PeerKey>) {
        // Unchoked peers that could make room: uninterested first, then
        // idle ones, the longest idle first, then (seeding) those that had
        // their turn.
        let mut spare: Vec<(Spare, Option<Instant>, PeerKey)> = Vec::new();
        let mut busy = 0;
        for p in peers {
            let Some(&(since, sent_then)) = self.unchoked.get(&p.key) else {
                continue;
            };
            if !p.interested {
                spare.push((Spare::Uninterested, None, p.key));
            } else if self.is_idle(p, now) {
                spare.push((Spare::Idle, p.busy_at, p.key));
            } else if self.quota.is_some_and(|q| {
                let turn = now.duration_since(since);
                (p.sent.saturating_sub(sent_then) >= q && turn >= MIN_TURN) || turn >= MAX_TURN
            }) {
                spare.push((Spare::Served, None, p.key));
            } else {
                busy += 1;
            }
        }
        let free = (self.slots + 1).saturating_sub(busy);
        // Best rate first; seeding, the least sent first.
        let mut waiting: Vec<(bool, u64, u32, PeerKey)> = peers
            .iter()
            .filter(|p| p.interested && !self.unchoked.contains_key(&p.key))
            .map(|p| {
                let benched = self
                    .benched
                    .get(&p.key)
                    .is_some_and(|at| now.duration_since(*at) < BENCH);
                let rank = match self.quota {
                    Some(_) => p.sent,
                    None => u64::MAX - p.rate,
                };
                (benched, rank, rng.random(), p.key)
            })
            .collect();
        waiting.sort_unstable();
        // A peer benched for idling may take a free slot, not the slot of
        // a peer that had its turn (it would idle there in turn).
        let served = spare.iter().filter(|s| s.0 == Spare::Served).count();
        let open = free.saturating_sub(served);
        let mut add: Vec<PeerKey> = Vec::new();
        for &(benched, _, _, k) in &waiting {
            if add.len() >= free || (benched && add.len() >= open) {
                break;
            }
            add.push(k);
        }
        // Make room for them among the spare ones.
        let over = (self.unchoked.len() + add.len()).saturating_sub(self.slots + 1);
        spare.sort_unstable();
        let choke: Vec<PeerKey> = spare.iter().take(over).map(|s| s.2).collect();
        for &(why, _, k) in spare.iter().take(over) {
            self.unchoked.remove(&k);
            if self.optimistic == Some(k) {
                self.optimistic = None;
            }
            if why == Spare::Idle {
                self.benched.insert(k, now);
            }
        }
        for &k in &add {
            let sent = peers.iter().find(|p| p.key == k).map_or(0, |p| p.sent);
            self.unchoked.insert(k, (now, sent));
            self.benched.remove(&k);
        }
        (sorted(add), sorted(choke))
    }
}

/// Why an unchoked peer may make room, in the order they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Spare {
    Uninterested,
    Idle,
    Served,
}

fn sorted(mut v: Vec<PeerKey>) -> Vec<PeerKey> {
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn peer(key: PeerKey, rate: u64) -> Candidate {
        Candidate {
            key,
            interested: true,
            rate,
            new: false,
            busy_at: None,
            sent: 0,
        }
    }

    #[test]
    fn best_rates_get_the_regular_slots_plus_one_optimistic() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = Choker::new(4);
        let peers: Vec<Candidate> = (0..10).map(|k| peer(k, u64::from(k) * 100)).collect();
        let (unchoke, choke) = c.round(&peers, Instant::now(), &mut rng);
        assert!(choke.is_empty());
        assert_eq!(unchoke.len(), 5);
        for k in [6, 7, 8, 9] {
            assert!(unchoke.contains(&k), "{unchoke:?}");
        }
        let optimistic = c.optimistic.unwrap();
        assert!(optimistic < 6);
    }

    #[test]
    fn uninterested_peers_stay_choked() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut c = Choker::new(4);
        let mut peers: Vec<Candidate> = (0..3).map(|k| peer(k, 1000)).collect();
        peers[1].interested = false;
        let (unchoke, _) = c.round(&peers, Instant::now(), &mut rng);
        assert_eq!(unchoke, vec![0, 2]);
        assert_eq!(
            c.fill(&peers, Instant::now(), &mut rng).0,
            Vec::<PeerKey>::new()
        );
        // It becomes interested: a slot is free, so at once.
        peers[1].interested = true;
        assert_eq!(c.fill(&peers, Instant::now(), &mut rng), (vec![1], vec![]));
        assert!(c.is_unchoked(1));
    }

    #[test]
    fn a_faster_peer_displaces_a_slower_one_next_round() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut c = Choker::new(1);
        let mut peers = vec![peer(0, 500), peer(1, 100), peer(2, 50)];
        c.round(&peers, Instant::now(), &mut rng);
        assert!(c.is_unchoked(0));
        peers[2].rate = 10_000;
        let (_, choke) = c.round(&peers, Instant::now(), &mut rng);
        // (It may have been the optimistic unchoke already.)
        assert!(c.is_unchoked(2));
        // 0 is now either choked or the optimistic unchoke.
        assert!(choke.contains(&0) || c.optimistic == Some(0));
        assert!(c.unchoked.len() <= 2);
    }

    #[test]
    fn optimistic_rotates_every_third_round_and_prefers_new_peers() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut counts = [0u32; 4];
        let mut c = Choker::new(1);
        // Peer 0 holds the regular slot; 1..=3 compete for the optimistic
        // one, and 3 is new.
        let mut peers = vec![peer(0, 1000), peer(1, 0), peer(2, 0), peer(3, 0)];
        peers[3].new = true;
        let mut last = None;
        let mut changes_off_rotation = 0;
        for round in 0..3000u32 {
            c.round(&peers, Instant::now(), &mut rng);
            let o = c.optimistic.unwrap();
            if round % 3 != 0 && last != Some(o) {
                changes_off_rotation += 1;
            }
            last = Some(o);
            if round % 3 == 0 {
                counts[o as usize] += 1;
            }
        }
        assert_eq!(changes_off_rotation, 0);
        assert_eq!(counts[0], 0);
        // Weights 1:1:3 → peer 3 about 60% of the 1000 draws.
        assert!((500..700).contains(&counts[3]), "{counts:?}");
        assert!(counts[1] > 120 && counts[2] > 120, "{counts:?}");
    }

    #[test]
    fn removed_peers_free_their_slot() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut c = Choker::new(1);
        let peers = vec![peer(0, 100), peer(1, 50), peer(2, 10)];
        c.round(&peers, Instant::now(), &mut rng);
        assert_eq!(c.unchoked.len(), 2);
        let gone = *c.unchoked.keys().next().unwrap();
        c.remove(gone);
        let rest: Vec<Candidate> = peers.into_iter().filter(|p| p.key != gone).collect();
        assert_eq!(c.fill(&rest, Instant::now(), &mut rng).0.len(), 1);
        assert_eq!(c.unchoked.len(), 2);
    }

    #[test]
    fn an_idle_peer_makes_room_for_a_waiting_one() {
        let mut rng = SmallRng::seed_from_u64(6);
        let t0 = Instant::now();
        let mut c = Choker::new(1);
        // 0 and 1 fill the regular and the optimistic slot; 2 waits.
        let mut peers = vec![peer(0, 100), peer(1, 50)];
        c.round(&peers, t0, &mut rng);
        assert!(c.is_unchoked(0) && c.is_unchoked(1));
        peers.push(peer(2, 0));
        // Freshly unchoked, nobody is idle yet.
        assert_eq!(c.fill(&peers, t0 + IDLE / 2, &mut rng), (vec![], vec![]));
        // 0 takes, 1 asks for nothing: 1 gives its slot to 2.
        let t1 = t0 + IDLE * 2;
        peers[0].busy_at = Some(t1);
        assert_eq!(c.fill(&peers, t1, &mut rng), (vec![2], vec![1]));
        assert!(c.is_unchoked(0) && c.is_unchoked(2) && !c.is_unchoked(1));
        // 2 idles in turn: 1, benched but the only one waiting, gets the
        // slot back.
        let t2 = t1 + IDLE * 2;
        peers[0].busy_at = Some(t2);
        assert_eq!(c.fill(&peers, t2, &mut rng), (vec![1], vec![2]));
        // Within its bench time a waiting peer that was never benched
        // comes first.
        peers.push(peer(3, 0));
        let t3 = t2 + IDLE * 2;
        peers[0].busy_at = Some(t3);
        let (unchoke, choke) = c.fill(&peers, t3, &mut rng);
        assert_eq!((unchoke, choke), (vec![3], vec![1]));
    }

    #[test]
    fn waiting_peers_come_before_benched_ones_and_the_total_stays_bounded() {
        let mut rng = SmallRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut c = Choker::new(2);
        let mut peers: Vec<Candidate> = (0..3).map(|k| peer(k, 100 - u64::from(k))).collect();
        c.round(&peers, t0, &mut rng);
        assert_eq!(c.unchoked.len(), 3);
        // All three idle; 3 and 4 arrive interested.
        peers.push(peer(3, 0));
        peers.push(peer(4, 0));
        let t1 = t0 + IDLE * 2;
        let (unchoke, choke) = c.fill(&peers, t1, &mut rng);
        assert_eq!(sorted(unchoke), vec![3, 4]);
        assert_eq!(choke.len(), 2);
        assert_eq!(c.unchoked.len(), 3);
        // Uninterested unchoked peers make room before idle ones.
        let mut d = Choker::new(1);
        let mut qs = vec![peer(0, 10), peer(1, 5)];
        d.round(&qs, t0, &mut rng);
        qs[0].interested = false;
        qs.push(peer(2, 0));
        let (unchoke, choke) = d.fill(&qs, t0 + IDLE * 2, &mut rng);
        assert_eq!(unchoke, vec![2]);
        assert_eq!(choke, vec![0]);
        for round in 0..50 {
            let now = t1 + IDLE * (round + 3);
            c.fill(&peers, now, &mut rng);
            assert!(c.unchoked.len() <= 3);
        }
    }

    #[test]
    fn seeding_the_slots_go_round_by_quota_least_sent_first() {
        let mut rng = SmallRng::seed_from_u64(9);
        let t0 = Instant::now();
        let mut c = Choker::new(1);
        c.rotate(Some(1000));
        // 0 and 1 have slots (the round unchokes the least sent, not the
        // fastest); 2 and 3 wait, 3 having been sent less.
        let mut peers = vec![peer(0, 9), peer(1, 9), peer(2, 500), peer(3, 1)];
        peers[2].sent = 300;
        peers[3].sent = 200;
        let (unchoke, choke) = c.round(&peers, t0, &mut rng);
        assert_eq!((unchoke, choke), (vec![0, 1], vec![]));
        // 0 had its quota: it makes room for 3 once its turn lasted
        // MIN_TURN; 1, still short of it (and busy), keeps its slot.
        peers[0].sent = 1000;
        peers[1].sent = 999;
        let early = t0 + MIN_TURN / 2;
        assert_eq!(c.fill(&peers, early, &mut rng), (vec![], vec![]));
        let t1 = t0 + MIN_TURN;
        for p in &mut peers[..2] {
            p.busy_at = Some(t1);
        }
        assert_eq!(c.fill(&peers, t1, &mut rng), (vec![3], vec![0]));
        // Nobody waits but 0 and 2: 1 had its quota and makes room for 2
        // (sent 300 against 0's 1000).
        peers[1].sent = 2000;
        assert_eq!(c.fill(&peers, t1, &mut rng), (vec![2], vec![1]));
        // A full round keeps those with slots (no optimistic unchoke).
        let t2 = t1 + MIN_TURN / 2;
        for p in &mut peers {
            p.busy_at = Some(t2);
        }
        let (unchoke, choke) = c.round(&peers, t2, &mut rng);
        assert!(unchoke.is_empty() && choke.is_empty());
        assert_eq!(c.optimistic, None);
        // With nobody waiting, a peer keeps its slot past its quota.
        peers.truncate(3);
        peers[2].sent = 5000;
        peers[0].interested = false;
        peers[1].interested = false;
        let (unchoke, choke) = c.fill(&peers, t2, &mut rng);
        assert!(unchoke.is_empty(), "{unchoke:?}");
        assert!(!choke.contains(&2), "{choke:?}");
        assert!(c.is_unchoked(2));
    }

    #[test]
    fn seeding_a_slow_turn_ends_and_a_benched_peer_takes_only_free_slots() {
        let mut rng = SmallRng::seed_from_u64(10);
        let t0 = Instant::now();
        let mut c = Choker::new(1);
        c.rotate(Some(1_000_000));
        let mut peers = vec![peer(0, 0), peer(1, 0)];
        c.round(&peers, t0, &mut rng);
        // 2 waits. 0 and 1 keep asking (busy) but take slowly: their turns
        // end after MAX_TURN, not before.
        peers.push(peer(2, 0));
        let mut now = t0;
        for _ in 0..9 {
            now += Duration::from_secs(1);
            for p in &mut peers[..2] {
                p.busy_at = Some(now);
                p.sent += 1000;
            }
            assert_eq!(c.fill(&peers, now, &mut rng), (vec![], vec![]));
        }
        now = t0 + MAX_TURN;
        for p in &mut peers[..2] {
            p.busy_at = Some(now);
        }
        let (unchoke, choke) = c.fill(&peers, now, &mut rng);
        assert_eq!(unchoke, [2]);
        assert_eq!(choke.len(), 1);

        // A peer benched for idling does not take the slot of one that had
        // its turn...
        let mut c = Choker::new(1);
        c.rotate(Some(1000));
        let mut peers = vec![peer(0, 0), peer(1, 0)];
        c.round(&peers, t0, &mut rng);
        let t1 = t0 + IDLE * 2;
        peers[1].busy_at = Some(t1);
        peers[1].sent = 500;
        peers.push(peer(2, 0));
        // 0 idles: benched, and 2 takes its slot.
        assert_eq!(c.fill(&peers, t1, &mut rng), (vec![2], vec![0]));
        // 1 and 2 had their turns; 0, benched, waits for a free slot.
        let t2 = t1 + MIN_TURN;
        for p in &mut peers[1..] {
            p.busy_at = Some(t2);
            p.sent += 1000;
        }
        assert_eq!(c.fill(&peers, t2, &mut rng), (vec![], vec![]));
        // ... but takes a free one: 2 leaves.
        peers.pop();
        c.remove(2);
        assert_eq!(c.fill(&peers, t2, &mut rng), (vec![0], vec![]));
    }

    #[test]
    fn a_peer_that_keeps_asking_is_busy_and_idle_peers_lose_regular_slots() {
        let mut rng = SmallRng::seed_from_u64(8);
        let t0 = Instant::now();
        let mut c = Choker::new(1);
        let mut peers = vec![peer(0, 100), peer(1, 50)];
        c.round(&peers, t0, &mut rng);
        peers.push(peer(2, 0));
        // 0 got no byte for a while (a slow share) but keeps asking; 1 takes.
        let t1 = t0 + IDLE * 2;
        peers[0].busy_at = Some(t1 - IDLE / 2);
        peers[1].busy_at = Some(t1);
        assert_eq!(c.fill(&peers, t1, &mut rng), (vec![], vec![]));
        // Next round 0, the fastest but now idle, is ranked last: the
        // regular slot goes to 1, not to 0 only for `fill` to take it back.
        let t2 = t1 + IDLE * 2;
        peers[1].busy_at = Some(t2);
        c.round(&peers, t2, &mut rng);
        assert!(c.is_unchoked(1));
        assert_ne!(c.optimistic, Some(1));
    }
}
