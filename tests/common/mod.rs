//! Helpers shared by the end-to-end tests: run the real `shoal` binary, make
//! test trees, and decide whether a third-party peer program is available.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Runs shoal with `args` in `cwd`.
pub fn shoal(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(SHOAL)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run shoal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "shoal {args:?} panicked:\n{stderr}"
    );
    out
}

/// Runs shoal and insists on success; returns stdout.
pub fn shoal_ok(cwd: &Path, args: &[&str]) -> String {
    let out = shoal(cwd, args);
    assert!(
        out.status.success(),
        "shoal {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `shoal show --json` of a torrent file.
pub fn show_json(cwd: &Path, torrent: &str) -> serde_json::Value {
    serde_json::from_str(&shoal_ok(cwd, &["show", "--json", torrent])).expect("json")
}

pub fn interop_required() -> bool {
    std::env::var("SHOAL_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// Is `program` (a peer program from Debian) here? If not: skip with a
/// printed reason, or fail when SHOAL_REQUIRE_INTEROP=1.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(found, program)
}

/// python3-libtorrent, which lives under Debian's /usr/bin/python3.
pub fn have_libtorrent() -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(
        found,
        "python3-libtorrent (/usr/bin/python3 -c 'import libtorrent')",
    )
}

fn skip_unless(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            !interop_required(),
            "{what} is not installed, and SHOAL_REQUIRE_INTEROP=1 requires it"
        );
        eprintln!("SKIP: {what} is not installed");
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// A tree with nested folders, an empty file, a hidden file, sizes that are
/// not multiples of any piece length, and names whose byte order differs
/// from a per-component order ("a-b" sorts before "a/…").
pub fn make_tree(root: &Path) -> PathBuf {
    write(&root.join("a/b/deep.bin"), &bytes(1, 70_001));
    write(&root.join("a/one.txt"), b"one\n");
    write(&root.join("a-b"), &bytes(2, 33_333));
    write(&root.join("empty"), b"");
    write(&root.join(".hidden"), b"hidden\n");
    write(&root.join("z/empty-too"), b"");
    write(&root.join("Zed.bin"), &bytes(3, 131_072));
    root.to_path_buf()
}

/// Every file under `dir`, relative, sorted (to prove nothing was written).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
