//! Multi-buffer SHA-1: sixteen independent messages hashed at once, one per
//! 32-bit lane of the AVX-512 registers (the technique of Intel ISA-L's
//! `mb_sha1`).
//!
//! A single SHA-1 stream is a long chain of dependent additions, so even the
//! SHA-NI instructions stop at about 1.2 GB/s per core. Sixteen unrelated
//! streams have no dependencies between them: each instruction below works on
//! all sixteen, and one core hashes several times faster in total. Piece
//! hashing has exactly this shape (many pieces of the same length), so
//! [`crate::pieces`] feeds sixteen pieces at a time through [`Sha1x16`].
//!
//! All lanes must advance by the same number of bytes in every
//! [`Sha1x16::update`]; they then also end with the same length and share one
//! padding layout.
//!
//! # Implementation
//!
//! The compression function is one `asm!` block rather than
//! `core::arch` intrinsics: the AVX-512 intrinsics and
//! `#[target_feature(enable = "avx512f")]` are only stable since Rust 1.89,
//! above this workspace's `rust-version`, whereas `asm!` is stable since 1.59.
//! The instruction sequence is the one intrinsics would give: each lane's
//! 64-byte block is loaded 16 bytes at a time into the four 128-bit quarters
//! of a register (`vinserti32x4`), which does the coarse part of the 16x16
//! word transpose; `vpunpck*` finish it, `vpshufb` byte-swaps, the message
//! schedule lives in a rolling window of 16 registers, and every round is
//! `vpternlogd` (0xCA choose, 0x96 parity, 0xE8 majority) plus `vprold`.
//! Everything is behind [`available`] (run-time CPU detection), so the code
//! builds and runs everywhere and only takes this path where it can.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// Messages hashed side by side.
pub const LANES: usize = 16;

const BLOCK: usize = 64;

/// The lanes given to one update did not all have the same length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("multi-buffer SHA-1 needs inputs of equal length in all {LANES} lanes")]
pub struct UnequalLengths;

/// Whether this CPU (and OS) can run the multi-buffer code: x86-64 with
/// AVX-512 F, BW and VL. Detected once, then cached.
pub fn available() -> bool {
    Cpu::detect().is_some()
}

/// Proof that the CPU supports the instructions [`compress`] uses; only
/// [`Cpu::detect`] makes one, and off x86-64 it never does.
#[derive(Debug, Clone, Copy)]
struct Cpu(());

impl Cpu {
    #[cfg(target_arch = "x86_64")]
    fn detect() -> Option<Cpu> {
        // 0: not detected yet, 1: unsupported, 2: supported.
        static CACHE: AtomicU8 = AtomicU8::new(0);
        let known = match CACHE.load(Ordering::Relaxed) {
            0 => {
                // std checks the OS saves the AVX-512 state (XCR0) too.
                let yes = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl");
                CACHE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        };
        known.then_some(Cpu(()))
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Option<Cpu> {
        None
    }
}

/// The five state words of all lanes, word-major: `0[w][lane]`, so each
/// word of all sixteen lanes is one 64-byte register load.
#[derive(Clone)]
#[repr(C, align(64))]
struct State([[u32; LANES]; 5]);

const INIT: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];

/// Incremental SHA-1 of sixteen messages of equal length.
///
/// ```
/// use torrent_format::sha1_mb::{Sha1x16, LANES};
/// if let Some(mut h) = Sha1x16::new() {
///     let data: Vec<Vec<u8>> = (0..LANES).map(|i| vec![i as u8; 1000]).collect();
///     let lanes: [&[u8]; LANES] = std::array::from_fn(|i| &data[i][..]);
///     h.update(&lanes).unwrap();
///     let digests = h.finish();
///     assert_eq!(digests.len(), LANES);
/// }
/// ```
#[derive(Clone)]
pub struct Sha1x16 {
    cpu: Cpu,
    state: State,
    /// Bytes hashed so far in each lane (the same for all).
    len: u64,
    /// Each lane's bytes not yet forming a whole block: `tail[lane][..tail_len]`.
    tail: [[u8; BLOCK]; LANES],
    tail_len: usize,
}

impl std::fmt::Debug for Sha1x16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha1x16").field("len", &self.len).finish()
    }
}

impl Sha1x16 {
    /// A fresh hasher, or `None` where the CPU lacks AVX-512 (see
    /// [`available`]); callers then hash each message with the `sha1` crate.
    pub fn new() -> Option<Sha1x16> {
        let cpu = Cpu::detect()?;
        Some(Sha1x16 {
            cpu,
            state: State(INIT.map(|w| [w; LANES])),
            len: 0,
            tail: [[0; BLOCK]; LANES],
            tail_len: 0,
        })
    }

    /// Appends `data[lane]` to each lane's message. All sixteen slices must
    /// have the same length (any length; whole multiples of 64 bytes are
    /// hashed straight from the slices, without copying). On
    /// [`UnequalLengths`] nothing is hashed.
    pub fn update(&mut self, data: &[&[u8]; LANES]) -> Result<(), UnequalLengths> {
        let n = data[0].len();
        if data.iter().any(|d| d.len() != n) {
            return Err(UnequalLengths);
        }
        self.len += n as u64;
        let mut done = 0;
        if self.tail_len > 0 {
            let take = n.min(BLOCK - self.tail_len);
            for (tail, d) in self.tail.iter_mut().zip(data) {
                tail[self.tail_len..self.tail_len + take].copy_from_slice(&d[..take]);
            }
            self.tail_len += take;
            done = take;
            if self.tail_len < BLOCK {
                return Ok(());
            }
            let ptrs = self.tail.each_ref().map(|t| t.as_ptr());
            // SAFETY: every pointer is to a whole 64-byte block.
            unsafe { compress(self.cpu, &mut self.state, &ptrs, 1) };
            self.tail_len = 0;
        }
        let blocks = (n - done) / BLOCK;
        if blocks > 0 {
            let ptrs = data.map(|d| d[done..].as_ptr());
            // SAFETY: each slice has `n - done >= blocks * 64` bytes from
            // `done` on (all lengths are `n`, checked above).
            unsafe { compress(self.cpu, &mut self.state, &ptrs, blocks) };
            done += blocks * BLOCK;
        }
        let rest = n - done;
        for (tail, d) in self.tail.iter_mut().zip(data) {
            tail[..rest].copy_from_slice(&d[done..]);
        }
        self.tail_len = rest;
        Ok(())
    }

    /// Pads every lane (the same padding, as all lengths are equal) and
    /// returns the sixteen digests in lane order.
    pub fn finish(mut self) -> [[u8; 20]; LANES] {
        // 0x80, zeros, then the bit length in the last 8 bytes of the last
        // block: one block if the tail leaves room for 9 bytes, else two.
        let blocks = if self.tail_len + 9 <= BLOCK { 1 } else { 2 };
        let mut last = [[0u8; 2 * BLOCK]; LANES];
        let end = blocks * BLOCK;
        let bits = self.len.wrapping_mul(8).to_be_bytes();
        for (buf, tail) in last.iter_mut().zip(&self.tail) {
            buf[..self.tail_len].copy_from_slice(&tail[..self.tail_len]);
            buf[self.tail_len] = 0x80;
            buf[end - 8..end].copy_from_slice(&bits);
        }
        let ptrs = last.each_ref().map(|b| b.as_ptr());
        // SAFETY: each buffer holds 128 >= blocks * 64 bytes.
        unsafe { compress(self.cpu, &mut self.state, &ptrs, blocks) };
        std::array::from_fn(|lane| {
            let mut out = [0u8; 20];
            for (w, bytes) in out.chunks_exact_mut(4).enumerate() {
                bytes.copy_from_slice(&self.state.0[w][lane].to_be_bytes());
            }
            out
        })
    }
}

/// The SHA-1 digests of sixteen messages of equal length: `None` where the
/// CPU lacks AVX-512 ([`available`]).
pub fn digest(data: &[&[u8]; LANES]) -> Option<Result<[[u8; 20]; LANES], UnequalLengths>> {
    let mut h = Sha1x16::new()?;
    Some(h.update(data).map(|()| h.finish()))
}

/// Never called: off x86-64 there is no `Cpu` to call it with.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn compress(_: Cpu, _: &mut State, _: &[*const u8; LANES], _: usize) {}

/// Runs the compression function over `blocks` consecutive 64-byte blocks
/// of each lane, lane `i` reading from `ptrs[i]`.
///
/// # Safety
///
/// Every `ptrs[i]` must be valid for reads of `blocks * 64` bytes. (That the
/// CPU supports AVX-512 F/BW/VL is proven by `Cpu`.)
// Not formatted: rustfmt would put every `concat!` piece and every round on
// lines of their own.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
unsafe fn compress(_: Cpu, state: &mut State, ptrs: &[*const u8; LANES], blocks: usize) {
    if blocks == 0 {
        return;
    }
    // Register use: zmm0..4 the working variables (their roles a..e rotate
    // by one register per round, so the values never move; 80 rounds are 16
    // full turns), zmm5..9 the state at the start of the block, zmm10 the
    // round constant, zmm11 the byte-swap mask, zmm12/13 scratch, and
    // zmm16..31 the message schedule: W[t] lives in zmm(16 + t % 16).

    // One lane's 64 bytes are four 16-byte quarters q; quarter q of lanes
    // 4c+j (c = 0..3) goes into 128-bit slot c of the register "row (j, q)".
    // `load!` fills slot 0 (zeroing the rest), `insert!` slot c.
    macro_rules! load {
        ($ptr:literal, $r0:literal, $r1:literal, $r2:literal, $r3:literal) => {
            concat!(
                "mov rax, qword ptr [rsi + ", $ptr, "]\n",
                "vmovdqu32 xmm", $r0, ", xmmword ptr [rax + rcx]\n",
                "vmovdqu32 xmm", $r1, ", xmmword ptr [rax + rcx + 16]\n",
                "vmovdqu32 xmm", $r2, ", xmmword ptr [rax + rcx + 32]\n",
                "vmovdqu32 xmm", $r3, ", xmmword ptr [rax + rcx + 48]\n",
            )
        };
    }
    macro_rules! insert {
        ($ptr:literal, $c:literal, $r0:literal, $r1:literal, $r2:literal, $r3:literal) => {
            concat!(
                "mov rax, qword ptr [rsi + ", $ptr, "]\n",
                "vinserti32x4 zmm", $r0, ", zmm", $r0, ", xmmword ptr [rax + rcx], ", $c, "\n",
                "vinserti32x4 zmm", $r1, ", zmm", $r1, ", xmmword ptr [rax + rcx + 16], ", $c, "\n",
                "vinserti32x4 zmm", $r2, ", zmm", $r2, ", xmmword ptr [rax + rcx + 32], ", $c, "\n",
                "vinserti32x4 zmm", $r3, ", zmm", $r3, ", xmmword ptr [rax + rcx + 48], ", $c, "\n",
            )
        };
    }
    // Within every 128-bit slot, rows (j = 0..3) of quarter q hold words
    // 4q..4q+3 of lanes 4c+j: a 4x4 transpose per slot (the classic
    // unpack-dword, unpack-qword pair) turns them into W[4q..4q+3], lane i
    // in dword i. Rows j = 0, 1, 2, 3 are in w3, w0, x, w1; the result lands
    // in w0..w3 (x and zmm10 are scratch).
    macro_rules! transpose {
        ($w0:literal, $w1:literal, $w2:literal, $w3:literal, $x:literal) => {
            concat!(
                "vpunpckldq zmm", $w2, ", zmm", $w3, ", zmm", $w0, "\n",
                "vpunpckhdq zmm", $w3, ", zmm", $w3, ", zmm", $w0, "\n",
                "vpunpckldq zmm10, zmm", $x, ", zmm", $w1, "\n",
                "vpunpckhdq zmm", $x, ", zmm", $x, ", zmm", $w1, "\n",
                "vpunpcklqdq zmm", $w0, ", zmm", $w2, ", zmm10\n",
                "vpunpckhqdq zmm", $w1, ", zmm", $w2, ", zmm10\n",
                "vpunpcklqdq zmm", $w2, ", zmm", $w3, ", zmm", $x, "\n",
                "vpunpckhqdq zmm", $w3, ", zmm", $w3, ", zmm", $x, "\n",
            )
        };
    }
    macro_rules! bswap {
        ($($w:literal),*) => {
            concat!($("vpshufb zmm", $w, ", zmm", $w, ", zmm11\n",)*)
        };
    }
    macro_rules! k {
        ($k:literal) => {
            concat!("mov eax, ", $k, "\n", "vpbroadcastd zmm10, eax\n")
        };
    }
    // e += rol5(a) + f(b, c, d) + K + W; b = rol30(b). The caller then
    // renames (a, b, c, d, e) to (e, a, b, c, d).
    macro_rules! round {
        (CH, $($r:literal),*) => { round!(@ "0xCA", $($r),*) };
        (PARITY, $($r:literal),*) => { round!(@ "0x96", $($r),*) };
        (MAJ, $($r:literal),*) => { round!(@ "0xE8", $($r),*) };
        (@ $f:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $w:literal) => {
            concat!(
                "vmovdqa32 zmm12, zmm", $b, "\n",
                "vpaddd zmm", $e, ", zmm", $e, ", zmm", $w, "\n",
                "vpternlogd zmm12, zmm", $c, ", zmm", $d, ", ", $f, "\n",
                "vpaddd zmm", $e, ", zmm", $e, ", zmm10\n",
                "vprold zmm13, zmm", $a, ", 5\n",
                "vpaddd zmm", $e, ", zmm", $e, ", zmm12\n",
                "vprold zmm", $b, ", zmm", $b, ", 30\n",
                "vpaddd zmm", $e, ", zmm", $e, ", zmm13\n",
            )
        };
    }
    // Once round t has used W[t], its register gets
    // W[t+16] = rol1(W[t] ^ W[t+2] ^ W[t+8] ^ W[t+13]).
    macro_rules! sched {
        ($w:literal, $w2:literal, $w8:literal, $w13:literal) => {
            concat!(
                "vpternlogd zmm", $w, ", zmm", $w2, ", zmm", $w8, ", 0x96\n",
                "vpxord zmm", $w, ", zmm", $w, ", zmm", $w13, "\n",
                "vprold zmm", $w, ", zmm", $w, ", 1\n",
            )
        };
    }

    let mask: &[u8; 64] = &BSWAP32;
    // SAFETY: the caller guarantees each lane pointer is readable for
    // `blocks * 64` bytes, and `Cpu` that the instructions exist. The block
    // reads `state` (320 bytes), the 16 pointers and the mask, writes only
    // `state`, uses no stack, and declares every register it touches: the
    // general ones explicitly, all vector and mask registers through
    // `clobber_abi("C")` (under the C ABI they are all caller-saved). It
    // ends with `vzeroupper` so following SSE code pays no transition.
    unsafe {
        core::arch::asm!(
            "vmovdqu64 zmm0, zmmword ptr [rdi]",
            "vmovdqu64 zmm1, zmmword ptr [rdi + 64]",
            "vmovdqu64 zmm2, zmmword ptr [rdi + 128]",
            "vmovdqu64 zmm3, zmmword ptr [rdi + 192]",
            "vmovdqu64 zmm4, zmmword ptr [rdi + 256]",
            "vmovdqu64 zmm11, zmmword ptr [r8]",
            "xor ecx, ecx",
            "2:",
            "vmovdqa64 zmm5, zmm0",
            "vmovdqa64 zmm6, zmm1",
            "vmovdqa64 zmm7, zmm2",
            "vmovdqa64 zmm8, zmm3",
            "vmovdqa64 zmm9, zmm4",
            load!(0, 19, 23, 27, 31),
            load!(8, 16, 20, 24, 28),
            load!(16, 12, 13, 14, 15),
            load!(24, 17, 21, 25, 29),
            insert!(32, 1, 19, 23, 27, 31),
            insert!(40, 1, 16, 20, 24, 28),
            insert!(48, 1, 12, 13, 14, 15),
            insert!(56, 1, 17, 21, 25, 29),
            insert!(64, 2, 19, 23, 27, 31),
            insert!(72, 2, 16, 20, 24, 28),
            insert!(80, 2, 12, 13, 14, 15),
            insert!(88, 2, 17, 21, 25, 29),
            insert!(96, 3, 19, 23, 27, 31),
            insert!(104, 3, 16, 20, 24, 28),
            insert!(112, 3, 12, 13, 14, 15),
            insert!(120, 3, 17, 21, 25, 29),
            transpose!(16, 17, 18, 19, 12),
            transpose!(20, 21, 22, 23, 13),
            transpose!(24, 25, 26, 27, 14),
            transpose!(28, 29, 30, 31, 15),
            bswap!(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31),
            // round!(f, a, b, c, d, e, W[t]) for t = 0..80, the roles
            // rotating with period 5 and W with period 16.
            k!(0x5A827999),
            round!(CH, 0, 1, 2, 3, 4, 16), sched!(16, 18, 24, 29),
            round!(CH, 4, 0, 1, 2, 3, 17), sched!(17, 19, 25, 30),
            round!(CH, 3, 4, 0, 1, 2, 18), sched!(18, 20, 26, 31),
            round!(CH, 2, 3, 4, 0, 1, 19), sched!(19, 21, 27, 16),
            round!(CH, 1, 2, 3, 4, 0, 20), sched!(20, 22, 28, 17),
            round!(CH, 0, 1, 2, 3, 4, 21), sched!(21, 23, 29, 18),
            round!(CH, 4, 0, 1, 2, 3, 22), sched!(22, 24, 30, 19),
            round!(CH, 3, 4, 0, 1, 2, 23), sched!(23, 25, 31, 20),
            round!(CH, 2, 3, 4, 0, 1, 24), sched!(24, 26, 16, 21),
            round!(CH, 1, 2, 3, 4, 0, 25), sched!(25, 27, 17, 22),
            round!(CH, 0, 1, 2, 3, 4, 26), sched!(26, 28, 18, 23),
            round!(CH, 4, 0, 1, 2, 3, 27), sched!(27, 29, 19, 24),
            round!(CH, 3, 4, 0, 1, 2, 28), sched!(28, 30, 20, 25),
            round!(CH, 2, 3, 4, 0, 1, 29), sched!(29, 31, 21, 26),
            round!(CH, 1, 2, 3, 4, 0, 30), sched!(30, 16, 22, 27),
            round!(CH, 0, 1, 2, 3, 4, 31), sched!(31, 17, 23, 28),
            round!(CH, 4, 0, 1, 2, 3, 16), sched!(16, 18, 24, 29),
            round!(CH, 3, 4, 0, 1, 2, 17), sched!(17, 19, 25, 30),
            round!(CH, 2, 3, 4, 0, 1, 18), sched!(18, 20, 26, 31),
            round!(CH, 1, 2, 3, 4, 0, 19), sched!(19, 21, 27, 16),
            k!(0x6ED9EBA1),
            round!(PARITY, 0, 1, 2, 3, 4, 20), sched!(20, 22, 28, 17),
            round!(PARITY, 4, 0, 1, 2, 3, 21), sched!(21, 23, 29, 18),
            round!(PARITY, 3, 4, 0, 1, 2, 22), sched!(22, 24, 30, 19),
            round!(PARITY, 2, 3, 4, 0, 1, 23), sched!(23, 25, 31, 20),
            round!(PARITY, 1, 2, 3, 4, 0, 24), sched!(24, 26, 16, 21),
            round!(PARITY, 0, 1, 2, 3, 4, 25), sched!(25, 27, 17, 22),
            round!(PARITY, 4, 0, 1, 2, 3, 26), sched!(26, 28, 18, 23),
            round!(PARITY, 3, 4, 0, 1, 2, 27), sched!(27, 29, 19, 24),
            round!(PARITY, 2, 3, 4, 0, 1, 28), sched!(28, 30, 20, 25),
            round!(PARITY, 1, 2, 3, 4, 0, 29), sched!(29, 31, 21, 26),
            round!(PARITY, 0, 1, 2, 3, 4, 30), sched!(30, 16, 22, 27),
            round!(PARITY, 4, 0, 1, 2, 3, 31), sched!(31, 17, 23, 28),
            round!(PARITY, 3, 4, 0, 1, 2, 16), sched!(16, 18, 24, 29),
            round!(PARITY, 2, 3, 4, 0, 1, 17), sched!(17, 19, 25, 30),
            round!(PARITY, 1, 2, 3, 4, 0, 18), sched!(18, 20, 26, 31),
            round!(PARITY, 0, 1, 2, 3, 4, 19), sched!(19, 21, 27, 16),
            round!(PARITY, 4, 0, 1, 2, 3, 20), sched!(20, 22, 28, 17),
            round!(PARITY, 3, 4, 0, 1, 2, 21), sched!(21, 23, 29, 18),
            round!(PARITY, 2, 3, 4, 0, 1, 22), sched!(22, 24, 30, 19),
            round!(PARITY, 1, 2, 3, 4, 0, 23), sched!(23, 25, 31, 20),
            k!(0x8F1BBCDC),
            round!(MAJ, 0, 1, 2, 3, 4, 24), sched!(24, 26, 16, 21),
            round!(MAJ, 4, 0, 1, 2, 3, 25), sched!(25, 27, 17, 22),
            round!(MAJ, 3, 4, 0, 1, 2, 26), sched!(26, 28, 18, 23),
            round!(MAJ, 2, 3, 4, 0, 1, 27), sched!(27, 29, 19, 24),
            round!(MAJ, 1, 2, 3, 4, 0, 28), sched!(28, 30, 20, 25),
            round!(MAJ, 0, 1, 2, 3, 4, 29), sched!(29, 31, 21, 26),
            round!(MAJ, 4, 0, 1, 2, 3, 30), sched!(30, 16, 22, 27),
            round!(MAJ, 3, 4, 0, 1, 2, 31), sched!(31, 17, 23, 28),
            round!(MAJ, 2, 3, 4, 0, 1, 16), sched!(16, 18, 24, 29),
            round!(MAJ, 1, 2, 3, 4, 0, 17), sched!(17, 19, 25, 30),
            round!(MAJ, 0, 1, 2, 3, 4, 18), sched!(18, 20, 26, 31),
            round!(MAJ, 4, 0, 1, 2, 3, 19), sched!(19, 21, 27, 16),
            round!(MAJ, 3, 4, 0, 1, 2, 20), sched!(20, 22, 28, 17),
            round!(MAJ, 2, 3, 4, 0, 1, 21), sched!(21, 23, 29, 18),
            round!(MAJ, 1, 2, 3, 4, 0, 22), sched!(22, 24, 30, 19),
            round!(MAJ, 0, 1, 2, 3, 4, 23), sched!(23, 25, 31, 20),
            round!(MAJ, 4, 0, 1, 2, 3, 24), sched!(24, 26, 16, 21),
            round!(MAJ, 3, 4, 0, 1, 2, 25), sched!(25, 27, 17, 22),
            round!(MAJ, 2, 3, 4, 0, 1, 26), sched!(26, 28, 18, 23),
            round!(MAJ, 1, 2, 3, 4, 0, 27), sched!(27, 29, 19, 24),
            k!(0xCA62C1D6),
            round!(PARITY, 0, 1, 2, 3, 4, 28), sched!(28, 30, 20, 25),
            round!(PARITY, 4, 0, 1, 2, 3, 29), sched!(29, 31, 21, 26),
            round!(PARITY, 3, 4, 0, 1, 2, 30), sched!(30, 16, 22, 27),
            round!(PARITY, 2, 3, 4, 0, 1, 31), sched!(31, 17, 23, 28),
            round!(PARITY, 1, 2, 3, 4, 0, 16),
            round!(PARITY, 0, 1, 2, 3, 4, 17),
            round!(PARITY, 4, 0, 1, 2, 3, 18),
            round!(PARITY, 3, 4, 0, 1, 2, 19),
            round!(PARITY, 2, 3, 4, 0, 1, 20),
            round!(PARITY, 1, 2, 3, 4, 0, 21),
            round!(PARITY, 0, 1, 2, 3, 4, 22),
            round!(PARITY, 4, 0, 1, 2, 3, 23),
            round!(PARITY, 3, 4, 0, 1, 2, 24),
            round!(PARITY, 2, 3, 4, 0, 1, 25),
            round!(PARITY, 1, 2, 3, 4, 0, 26),
            round!(PARITY, 0, 1, 2, 3, 4, 27),
            round!(PARITY, 4, 0, 1, 2, 3, 28),
            round!(PARITY, 3, 4, 0, 1, 2, 29),
            round!(PARITY, 2, 3, 4, 0, 1, 30),
            round!(PARITY, 1, 2, 3, 4, 0, 31),
            "vpaddd zmm0, zmm0, zmm5",
            "vpaddd zmm1, zmm1, zmm6",
            "vpaddd zmm2, zmm2, zmm7",
            "vpaddd zmm3, zmm3, zmm8",
            "vpaddd zmm4, zmm4, zmm9",
            "add rcx, 64",
            "dec rdx",
            "jnz 2b",
            "vmovdqu64 zmmword ptr [rdi], zmm0",
            "vmovdqu64 zmmword ptr [rdi + 64], zmm1",
            "vmovdqu64 zmmword ptr [rdi + 128], zmm2",
            "vmovdqu64 zmmword ptr [rdi + 192], zmm3",
            "vmovdqu64 zmmword ptr [rdi + 256], zmm4",
            "vzeroupper",
            in("rdi") state.0.as_mut_ptr(),
            in("rsi") ptrs.as_ptr(),
            inout("rdx") blocks => _,
            in("r8") mask.as_ptr(),
            out("rax") _,
            out("rcx") _,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// `vpshufb` indices reversing the bytes of each 32-bit word.
#[cfg(target_arch = "x86_64")]
static BSWAP32: [u8; 64] = {
    let mut m = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        // Within each 16-byte lane: byte i takes byte (i & !3) + 3 - (i & 3).
        m[i] = ((i & 12) + 3 - (i & 3)) as u8;
        i += 1;
    }
    m
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    fn skip() -> bool {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 (F, BW, VL)");
            return true;
        }
        false
    }

    /// Sixteen different pseudo-random messages of `len` bytes.
    fn messages(len: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..LANES)
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
            .collect()
    }

    fn lanes(data: &[Vec<u8>]) -> [&[u8]; LANES] {
        std::array::from_fn(|i| &data[i][..])
    }

    fn expected(data: &[Vec<u8>]) -> Vec<[u8; 20]> {
        data.iter().map(|d| Sha1::digest(d).into()).collect()
    }

    #[test]
    fn matches_sha1_crate_for_many_lengths() {
        if skip() {
            return;
        }
        for (i, len) in [
            0,
            1,
            55,
            56,
            63,
            64,
            65,
            119,
            120,
            127,
            128,
            1000,
            16384,
            1 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            let data = messages(len, i as u64);
            let got = digest(&lanes(&data)).unwrap().unwrap();
            assert_eq!(got.to_vec(), expected(&data), "length {len}");
        }
    }

    #[test]
    fn streaming_in_any_chunk_size() {
        if skip() {
            return;
        }
        let data = messages(70_000, 7);
        let want = expected(&data);
        for chunk in [1, 7, 63, 64, 65, 100, 4096, 65536, 70_000] {
            let mut h = Sha1x16::new().unwrap();
            let mut at = 0;
            while at < data[0].len() {
                let end = (at + chunk).min(data[0].len());
                let part: [&[u8]; LANES] = std::array::from_fn(|i| &data[i][at..end]);
                h.update(&part).unwrap();
                at = end;
            }
            assert_eq!(h.finish().to_vec(), want, "chunk {chunk}");
        }
    }

    #[test]
    fn lanes_are_independent_of_alignment() {
        if skip() {
            return;
        }
        // Each lane starts at a different misalignment in one buffer.
        let big = messages(5000 + LANES, 3).swap_remove(0);
        let data: Vec<Vec<u8>> = (0..LANES).map(|i| big[i..i + 5000].to_vec()).collect();
        let slices: [&[u8]; LANES] = std::array::from_fn(|i| &big[i..i + 5000]);
        assert_eq!(digest(&slices).unwrap().unwrap().to_vec(), expected(&data));
    }

    #[test]
    fn unequal_lengths_are_refused_without_hashing() {
        if skip() {
            return;
        }
        let mut data = messages(100, 1);
        data[5].push(0);
        assert_eq!(digest(&lanes(&data)).unwrap(), Err(UnequalLengths));
        let mut h = Sha1x16::new().unwrap();
        assert_eq!(h.update(&lanes(&data)), Err(UnequalLengths));
        // The refused update left the hasher untouched.
        data[5].pop();
        h.update(&lanes(&data)).unwrap();
        assert_eq!(h.finish().to_vec(), expected(&data));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_sha1_crate(
            len in 0usize..3000,
            seed in any::<u64>(),
            cuts in proptest::collection::vec(0usize..3000, 0..6),
        ) {
            if skip() {
                return Ok(());
            }
            let data = messages(len, seed);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let mut h = Sha1x16::new().unwrap();
            for w in cuts.windows(2) {
                let part: [&[u8]; LANES] = std::array::from_fn(|i| &data[i][w[0]..w[1]]);
                h.update(&part).unwrap();
            }
            prop_assert_eq!(h.finish().to_vec(), expected(&data));
        }
    }
}
