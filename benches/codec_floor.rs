//! The CPU floor of `pgwal archive`: what compressing (zstd, 1 MiB frames, one
//! reused context, as `frame::encode_parts` does) and hashing (SHA-256) a WAL
//! segment cost in-process, with the segments already in memory. Nothing
//! else `archive` does (start-up, reading, validating, storing, fsync) is
//! counted, so `pgwal archive` can only approach this number.
//!
//! Prints one line: `floor_ms_per_segment=... ratio=... segments=N level=L`.
//! CPU is user+sys of this process (getrusage) over `PGWAL_FLOOR_PASSES`
//! (default 3) passes, divided by the segments processed.
//!
//! Run with `cargo bench --bench codec_floor -- DIR` (the directory of WAL
//! segments; else `PGWAL_BENCH_WAL_DIR`, else `/var/tmp/pgwal-bench/corpus`).
//! `benches/archive_cpu.sh` runs it beside `pgwal archive`.

use std::hint::black_box;
use std::path::PathBuf;

use pgwal::config::DEFAULT_COMPRESS_LEVEL;
use pgwal::repo::frame::CHUNK_SIZE;
use sha2::{Digest, Sha256};

/// user+sys CPU of this process so far, in milliseconds.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

fn main() {
    // `cargo bench` passes `--bench`; the directory is the first other argument.
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .or_else(|| std::env::var("PGWAL_BENCH_WAL_DIR").ok())
        .unwrap_or_else(|| "/var/tmp/pgwal-bench/corpus".into());
    let level: i32 =
        std::env::var("PGWAL_FLOOR_LEVEL").ok().and_then(|l| l.parse().ok()).unwrap_or(DEFAULT_COMPRESS_LEVEL);
    let passes: usize = std::env::var("PGWAL_FLOOR_PASSES").ok().and_then(|l| l.parse().ok()).unwrap_or(3).max(1);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read '{dir}': {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no WAL segments in '{dir}'");
    let segments: Vec<Vec<u8>> = names
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read '{}': {e}", p.display())))
        .collect();

    let mut cctx = zstd::bulk::Compressor::new(level).expect("zstd context");
    let mut original = 0u64;
    let mut compressed = 0u64;
    // One warm-up pass (allocator, page faults of the output), not counted.
    for seg in &segments {
        black_box(Sha256::digest(seg));
        for chunk in seg.chunks(CHUNK_SIZE) {
            black_box(cctx.compress(chunk).expect("compress"));
        }
    }
    let start = cpu_ms();
    for _ in 0..passes {
        for seg in &segments {
            black_box(Sha256::digest(seg));
            for chunk in seg.chunks(CHUNK_SIZE) {
                let out = cctx.compress(chunk).expect("compress");
                compressed += out.len() as u64;
            }
            original += seg.len() as u64;
        }
    }
    let used = cpu_ms() - start;
    let n = segments.len() * passes;
    println!(
        "floor_ms_per_segment={:.1} ratio={:.3} segments={} level={level}",
        used / n as f64,
        original as f64 / compressed as f64,
        segments.len()
    );
}
