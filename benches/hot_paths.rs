//! Benchmarks of the work pgwal does once per WAL segment, each time in a fresh
//! process started by PostgreSQL:
//!
//! - `compress_hash/<level>`: framing a real 16 MiB segment (zstd on all cores
//!   beside the SHA-256), with the compression ratio printed per level for the
//!   segment and for the whole corpus;
//! - `decode_verify`: decompressing and checking the object at the default level;
//! - `sha256_16mib`, `zstd3_single_thread`: the single-core reference points
//!   that show how much the parallel framing gains;
//! - `archive_inmemory/store`, `archive_inmemory/identical`: `archive` end to
//!   end into an in-memory repository, for a new segment and for a segment that
//!   is already stored (PostgreSQL retrying after a crash);
//! - `fetch_inmemory`: `fetch` end to end from an in-memory repository into a
//!   file.
//!
//! Run with `cargo bench --bench hot_paths`. The segments come from the
//! directory named by `PGWAL_BENCH_WAL_DIR`, else `/var/tmp/pgwal-bench/corpus`;
//! create one with `bash ../shared/bench/make_wal.sh /var/tmp/pgwal-bench/corpus 64`.
//! The first segment in name order is benchmarked. Set
//! `PGWAL_BENCH_CORPUS_RATIO=0` to skip the ratio pass over the whole corpus
//! (it compresses every segment at every level before the benches start).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use object_store::memory::InMemory;
use object_store::ObjectStoreExt;
use pgwal::config::{ArchiveOptions, DEFAULT_COMPRESS_LEVEL};
use pgwal::pg::WalFileName;
use pgwal::repo::frame::{self, Compression};
use pgwal::repo::{keys, PutOutcome, Repository};
use pgwal::storage::{RetryPolicy, Store};

/// The zstd levels worth comparing for WAL (the default is 1).
const LEVELS: [i32; 5] = [1, 2, 3, 4, 6];
/// Where `make_wal.sh` puts the corpus unless told otherwise.
const DEFAULT_CORPUS: &str = "/var/tmp/pgwal-bench/corpus";
/// Retry deadline for the in-memory repository (it never fails).
const DEADLINE: Duration = Duration::from_secs(5);

/// The WAL segment files of the corpus directory, in name order.
struct Corpus {
    dir: PathBuf,
    segments: Vec<PathBuf>,
}

/// A WAL segment file name: 24 upper-case hex digits.
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Finds the corpus, or says why there is none and how to make one.
fn find_corpus() -> Result<Corpus, String> {
    let (dir, origin) = match std::env::var_os("PGWAL_BENCH_WAL_DIR") {
        Some(d) => (PathBuf::from(d), "PGWAL_BENCH_WAL_DIR"),
        None => (PathBuf::from(DEFAULT_CORPUS), "the default corpus directory"),
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {origin} '{}': {e}", dir.display()))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list '{}': {e}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && entry.file_name().to_str().is_some_and(is_segment_name) {
            segments.push(entry.path());
        }
    }
    if segments.is_empty() {
        return Err(format!("{origin} '{}' holds no WAL segment files", dir.display()));
    }
    segments.sort();
    Ok(Corpus { dir, segments })
}

/// A repository on a store that lives in memory.
fn memory_repo(objects: Arc<InMemory>) -> Repository {
    let store = Store { objects, local_root: None };
    let url = "s3://bench/x".parse().expect("invariant: a literal S3 URL parses");
    Repository::new(store, url, RetryPolicy::with_deadline(DEADLINE))
}

/// A current-thread runtime, as the `pgwal` binary uses.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cannot start a tokio runtime")
}

/// Original bytes over framed bytes for every segment of the corpus, per level
/// of [`LEVELS`]. Reads each segment once and frames it at every level.
fn corpus_ratios(corpus: &Corpus) -> Vec<f64> {
    let started = Instant::now();
    let mut original = 0u64;
    let mut encoded = [0u64; LEVELS.len()];
    for path in &corpus.segments {
        let content = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read '{}': {e}", path.display()));
        original += content.len() as u64;
        for (total, level) in encoded.iter_mut().zip(LEVELS) {
            let (object, _) = frame::encode(&content, Compression::Zstd(level))
                .unwrap_or_else(|e| panic!("cannot frame '{}' at level {level}: {e}", path.display()));
            *total += object.len() as u64;
        }
    }
    eprintln!(
        "corpus ratio pass: {} segments, {:.1} MiB, {:.1} s",
        corpus.segments.len(),
        original as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64()
    );
    encoded.iter().map(|&e| original as f64 / e as f64).collect()
}

fn hot_paths(c: &mut Criterion) {
    let corpus = match find_corpus() {
        Ok(corpus) => corpus,
        Err(why) => {
            eprintln!("pgwal bench: skipping every benchmark: {why}");
            eprintln!("hint: create a corpus with `bash ../shared/bench/make_wal.sh {DEFAULT_CORPUS} 64`");
            eprintln!("      or point PGWAL_BENCH_WAL_DIR at a directory of WAL segment files");
            return;
        }
    };
    let seg_path = &corpus.segments[0];
    let seg_file_name = seg_path.file_name().and_then(|n| n.to_str()).expect("invariant: chosen by its name");
    let segment = std::fs::read(seg_path).unwrap_or_else(|e| panic!("cannot read '{}': {e}", seg_path.display()));
    let seg_len = segment.len() as u64;
    eprintln!(
        "pgwal bench: segment '{}' ({seg_len} bytes) of {} in '{}'",
        seg_file_name,
        corpus.segments.len(),
        corpus.dir.display()
    );

    let corpus_ratio = match std::env::var("PGWAL_BENCH_CORPUS_RATIO") {
        Ok(v) if v == "0" => None,
        _ => Some(corpus_ratios(&corpus)),
    };

    let mut group = c.benchmark_group("compress_hash");
    group.throughput(Throughput::Bytes(seg_len)).sample_size(20);
    for (i, level) in LEVELS.into_iter().enumerate() {
        let (object, _) = frame::encode(&segment, Compression::Zstd(level))
            .unwrap_or_else(|e| panic!("cannot frame '{seg_file_name}' at level {level}: {e}"));
        let on_corpus = corpus_ratio.as_ref().map_or_else(|| "skipped".to_string(), |r| format!("{:.3}", r[i]));
        eprintln!(
            "compress_hash/{level}: ratio {:.3} on '{seg_file_name}' ({} -> {} bytes), {on_corpus} on the corpus",
            seg_len as f64 / object.len() as f64,
            seg_len,
            object.len(),
        );
        group.bench_function(level.to_string(), |b| {
            b.iter(|| frame::encode(black_box(&segment), Compression::Zstd(level)))
        });
    }
    group.finish();

    let (object, _) = frame::encode(&segment, Compression::Zstd(DEFAULT_COMPRESS_LEVEL)).expect("framed above");
    let mut group = c.benchmark_group("decode_verify");
    group.throughput(Throughput::Bytes(seg_len)).sample_size(20);
    group.bench_function("default_level", |b| {
        b.iter(|| {
            let checked = frame::decode_with(black_box(&object), |_, _| Ok(()));
            assert!(matches!(checked, Ok(Ok(_))), "the object must decode: {checked:?}");
        })
    });
    group.finish();

    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Bytes(seg_len)).sample_size(20);
    group.bench_function("sha256_16mib", |b| b.iter(|| frame::sha256(black_box(&segment))));
    group.bench_function("zstd3_single_thread", |b| {
        b.iter(|| zstd::bulk::compress(black_box(&segment), 3).expect("zstd compresses in memory"))
    });
    group.finish();

    bench_archive_fetch(c, &segment, seg_file_name);
}

/// `archive` and `fetch` end to end against an in-memory repository.
fn bench_archive_fetch(c: &mut Criterion, segment: &[u8], seg_file_name: &str) {
    // archive() wants the file under its WAL name, so copy it into a temp dir.
    let tmp = tempfile::tempdir().expect("cannot create a temporary directory");
    let wal_path = tmp.path().join(seg_file_name);
    std::fs::write(&wal_path, segment).unwrap_or_else(|e| panic!("cannot write '{}': {e}", wal_path.display()));
    let name: WalFileName = seg_file_name.parse().expect("invariant: chosen as a segment name");
    let rt = runtime();
    let opts = ArchiveOptions {
        compress_level: DEFAULT_COMPRESS_LEVEL,
        retry_deadline: DEADLINE,
        parallel: 1,
        ahead: 0,
        helper: false,
    };

    // A repository that already holds the format and the cluster identity but
    // not this segment: archive it once, then delete it again. Each "store"
    // iteration gets a fresh fork, so it measures the steady state of a
    // repository in use, not the one-off creation of a new one.
    let template = Arc::new(InMemory::new());
    archive_once(&rt, &memory_repo(template.clone()), &wal_path, &opts);
    rt.block_on(template.delete(&keys::wal(&name))).expect("the segment was just stored");

    let mut group = c.benchmark_group("archive_inmemory");
    group.throughput(Throughput::Bytes(segment.len() as u64)).sample_size(20);
    group.bench_function("store", |b| {
        b.iter_batched(
            || memory_repo(Arc::new(template.fork())),
            |repo| {
                let outcome = pgwal::ops::archive::archive(&rt, &repo, &wal_path, &opts, None);
                assert!(matches!(outcome, Ok(PutOutcome::Stored)), "archive must store the segment: {outcome:?}");
                // Returned so that freeing the store is not timed.
                repo
            },
            BatchSize::SmallInput,
        )
    });
    let repo = memory_repo(Arc::new(template.fork()));
    archive_once(&rt, &repo, &wal_path, &opts);
    group.bench_function("identical", |b| {
        b.iter(|| {
            let outcome = pgwal::ops::archive::archive(&rt, &repo, &wal_path, &opts, None);
            assert!(matches!(outcome, Ok(PutOutcome::AlreadyIdentical)), "must find it identical: {outcome:?}");
        })
    });
    group.finish();

    let dest = tmp.path().join("RECOVERYXLOG");
    let mut group = c.benchmark_group("fetch_inmemory");
    group.throughput(Throughput::Bytes(segment.len() as u64)).sample_size(20);
    group.bench_function("default_level", |b| {
        b.iter(|| {
            if let Err(e) = pgwal::ops::fetch::fetch(&rt, &repo, &name, &dest) {
                panic!("fetch of '{name}' into '{}' failed: {e}", dest.display());
            }
        })
    });
    group.finish();
    let fetched = std::fs::read(&dest).unwrap_or_else(|e| panic!("cannot read '{}': {e}", dest.display()));
    assert!(fetched == segment, "fetch must restore the archived bytes");
}

/// Archives `path` into `repo` outside the timing, failing loudly.
fn archive_once(rt: &tokio::runtime::Runtime, repo: &Repository, path: &Path, opts: &ArchiveOptions) {
    if let Err(e) = pgwal::ops::archive::archive(rt, repo, path, opts, None) {
        panic!("cannot archive '{}' into memory: {e}", path.display());
    }
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
