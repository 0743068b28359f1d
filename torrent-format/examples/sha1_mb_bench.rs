//! Single-core SHA-1 throughput: the `sha1` crate (SHA-NI where present)
//! against the 16-lane multi-buffer code, over 16 in-memory buffers.
//!
//! `cargo run --release -p torrent-format --example sha1_mb_bench [MiB per lane]`

use std::time::Instant;

use sha1::{Digest, Sha1};
use torrent_format::sha1_mb::{self, Sha1x16, LANES};

/// Bytes each lane gets per update, as `pieces` feeds them.
const STEP: usize = 64 << 10;
const RUNS: usize = 5;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let len = mib << 20;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<Vec<u8>> = (0..LANES)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect();
    let total = (LANES * len) as f64 / 1e6;
    println!("{LANES} x {mib} MiB, best of {RUNS} runs, one thread");

    let (secs, scalar) = best(|| {
        data.iter()
            .map(|d| <[u8; 20]>::from(Sha1::digest(d)))
            .collect::<Vec<_>>()
    });
    println!("sha1 crate:    {:7.0} MB/s", total / secs);

    if !sha1_mb::available() {
        println!("multi-buffer:  not available (no AVX-512 F/BW/VL)");
        return;
    }
    let (secs, mb) = best(|| {
        let mut h = Sha1x16::new().expect("available");
        for at in (0..len).step_by(STEP) {
            let end = (at + STEP).min(len);
            let part: [&[u8]; LANES] = std::array::from_fn(|i| &data[i][at..end]);
            h.update(&part).expect("equal lengths");
        }
        h.finish().to_vec()
    });
    assert_eq!(
        mb, scalar,
        "multi-buffer digests differ from the sha1 crate's"
    );
    println!("multi-buffer:  {:7.0} MB/s", total / secs);
}

fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("RUNS > 0"))
}
