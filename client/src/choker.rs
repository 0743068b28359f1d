//! Who we upload to — a plain struct (sans-IO), like the picker.
//!
//! Every [`ROUND`] the session calls [`Choker::round`] with every peer: the
//! `slots` interested peers with the best rate are unchoked ("regular"
//! slots), and one more peer gets the optimistic unchoke, rotated every
//! third round (30 s) and drawn at random with newly connected peers three
//! times as likely, so a newcomer with nothing to offer yet gets a start.
//! The rate is what a peer sends us while we download (tit for tat) and
//! what we send it while we seed (feed those who take fastest).
//!
//! Between rounds [`Choker::fill`] hands free slots to interested peers at
//! once, so a peer that becomes interested does not wait up to 10 s.
//! Uninterested peers are never unchoked: they would not ask anyway.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use crate::picker::PeerKey;

/// Time between choke rounds.
pub const ROUND: Duration = Duration::from_secs(10);
/// Rounds per optimistic rotation.
const OPTIMISTIC_EVERY: u32 = 3;

/// One peer as the choker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: PeerKey,
    pub interested: bool,
    /// Bytes per second: from it while downloading, to it while seeding.
    pub rate: u64,
    /// Connected within the last optimistic period.
    pub new: bool,
}

#[derive(Debug, Clone)]
pub struct Choker {
    slots: usize,
    round: u32,
    optimistic: Option<PeerKey>,
    unchoked: HashSet<PeerKey>,
}

impl Choker {
    pub fn new(slots: usize) -> Choker {
        Choker {
            slots: slots.max(1),
            round: 0,
            optimistic: None,
            unchoked: HashSet::new(),
        }
    }

    pub fn is_unchoked(&self, key: PeerKey) -> bool {
        self.unchoked.contains(&key)
    }

    /// A peer disconnected.
    pub fn remove(&mut self, key: PeerKey) {
        self.unchoked.remove(&key);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
    }

    /// A full round. Returns the peers to unchoke and to choke now.
    pub fn round<R: Rng>(
        &mut self,
        peers: &[Candidate],
        rng: &mut R,
    ) -> (Vec<PeerKey>, Vec<PeerKey>) {
        let mut interested: Vec<&Candidate> = peers.iter().filter(|p| p.interested).collect();
        // Best rate first; among equals, keep those already unchoked (no
        // pointless churn), then at random.
        interested.sort_by_cached_key(|p| {
            (
                std::cmp::Reverse(p.rate),
                !self.unchoked.contains(&p.key),
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
        let unchoke = next.difference(&self.unchoked).copied().collect();
        let choke = self.unchoked.difference(&next).copied().collect();
        self.unchoked = next;
        (sorted(unchoke), sorted(choke))
    }

    /// Between rounds: unchoke interested peers while slots are free
    /// (`slots` + the optimistic one). Returns the peers to unchoke.
    pub fn fill(&mut self, peers: &[Candidate]) -> Vec<PeerKey> {
        // Peers that lost interest give their slot back.
        let interested: HashSet<PeerKey> = peers
            .iter()
            .filter(|p| p.interested)
            .map(|p| p.key)
            .collect();
        let busy = self
            .unchoked
            .iter()
            .filter(|k| interested.contains(k))
            .count();
        let free = (self.slots + 1).saturating_sub(busy);
        let mut waiting: Vec<&Candidate> = peers
            .iter()
            .filter(|p| p.interested && !self.unchoked.contains(&p.key))
            .collect();
        waiting.sort_by_key(|p| (std::cmp::Reverse(p.rate), p.key));
        let add: Vec<PeerKey> = waiting.iter().take(free).map(|p| p.key).collect();
        self.unchoked.extend(&add);
        add
    }
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
        }
    }

    #[test]
    fn best_rates_get_the_regular_slots_plus_one_optimistic() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = Choker::new(4);
        let peers: Vec<Candidate> = (0..10).map(|k| peer(k, u64::from(k) * 100)).collect();
        let (unchoke, choke) = c.round(&peers, &mut rng);
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
        let (unchoke, _) = c.round(&peers, &mut rng);
        assert_eq!(unchoke, vec![0, 2]);
        assert_eq!(c.fill(&peers), Vec::<PeerKey>::new());
        // It becomes interested: a slot is free, so at once.
        peers[1].interested = true;
        assert_eq!(c.fill(&peers), vec![1]);
        assert!(c.is_unchoked(1));
    }

    #[test]
    fn a_faster_peer_displaces_a_slower_one_next_round() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut c = Choker::new(1);
        let mut peers = vec![peer(0, 500), peer(1, 100), peer(2, 50)];
        c.round(&peers, &mut rng);
        assert!(c.is_unchoked(0));
        peers[2].rate = 10_000;
        let (_, choke) = c.round(&peers, &mut rng);
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
            c.round(&peers, &mut rng);
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
        c.round(&peers, &mut rng);
        assert_eq!(c.unchoked.len(), 2);
        let gone = *c.unchoked.iter().next().unwrap();
        c.remove(gone);
        let rest: Vec<Candidate> = peers.into_iter().filter(|p| p.key != gone).collect();
        assert_eq!(c.fill(&rest).len(), 1);
        assert_eq!(c.unchoked.len(), 2);
    }
}
