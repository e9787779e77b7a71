//! One storage conformance suite, run against the in-memory store, a
//! `file://` repository in a temp dir and a real S3 server (s3s-fs): the
//! repository rules (create-only, checksum comparison, format and identity,
//! "missing" versus "empty") must hold the same on every backend.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use pgwal::error::Error;
use pgwal::repo::frame::{self, Compression};
use pgwal::repo::{keys, ClusterIdentity, PutOutcome, RepoIdentity, Repository};
use pgwal::storage::{self, Access, RepoUrl, RetryPolicy, S3Options, Store, StoreOptions};

fn retry() -> RetryPolicy {
    RetryPolicy::with_deadline(Duration::from_secs(5))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn identity(sysid: u64) -> ClusterIdentity {
    ClusterIdentity { system_identifier: sysid, pg_version: 15, wal_segment_size: 16 << 20 }
}

/// The suite. `fresh` must return a handle on an empty repository location.
fn conformance(name: &str, fresh: impl Fn(&str) -> Repository) {
    let rt = rt();
    rt.block_on(async {
        // A location with nothing in it is "no repository", not an empty one.
        let repo = fresh("missing");
        assert!(matches!(repo.require_exists().await, Err(Error::RepositoryMissing { .. })), "{name}: missing");
        assert_eq!(repo.identity().await.expect("identity of nothing").cluster, None, "{name}");
        let key = keys::wal(&"000000010000000000000001".parse().expect("name"));
        assert!(repo.get(&key).await.expect("get of nothing").is_none(), "{name}: get missing");
        assert!(repo.read_header(&key).await.expect("header of nothing").is_none(), "{name}");

        // Format and identity: created once, then stable.
        let repo = fresh("main");
        repo.create_format().await.expect("create format");
        repo.create_format().await.expect("create format again is fine");
        repo.require_exists().await.expect("exists after create");
        assert_eq!(repo.create_identity(&identity(7)).await.expect("identity"), identity(7), "{name}");
        assert_eq!(
            repo.create_identity(&identity(8)).await.expect("second identity returns the first"),
            identity(7),
            "{name}: identity must never be replaced"
        );
        assert_eq!(
            repo.identity().await.expect("read identity"),
            RepoIdentity { format_exists: true, cluster: Some(identity(7)) },
            "{name}"
        );

        // Create-only puts with checksum comparison.
        let original = vec![42u8; 100_000];
        let (object, header) = frame::encode(&original, Compression::Zstd(3)).expect("encode");
        let object = Bytes::from(object);
        assert_eq!(
            repo.put_create(&key, object.clone().into(), &header).await.expect("put"),
            PutOutcome::Stored,
            "{name}"
        );
        assert_eq!(
            repo.put_create(&key, object.clone().into(), &header).await.expect("identical put"),
            PutOutcome::AlreadyIdentical,
            "{name}"
        );
        let (other, other_header) = frame::encode(&[43u8; 100_000], Compression::Zstd(3)).expect("encode");
        let refused = repo.put_create(&key, Bytes::from(other).into(), &other_header).await;
        assert!(
            matches!(refused, Err(Error::Conflict { .. })),
            "{name}: different content must be refused: {refused:?}"
        );
        let stored = repo.get(&key).await.expect("get").expect("still there");
        assert_eq!(stored, object, "{name}: the stored object must be unchanged after a refused put");
        assert_eq!(frame::decode(&stored).expect("decodes"), original, "{name}");
        assert_eq!(repo.read_header(&key).await.expect("header"), Some(header), "{name}");

        // Concurrent identical puts (PostgreSQL retrying while a slow call
        // still runs) all succeed and leave one intact object.
        let key2 = keys::wal(&"000000010000000000000002".parse().expect("name"));
        let puts = (0..6).map(|_| repo.put_create(&key2, object.clone().into(), &header));
        for outcome in futures::future::join_all(puts).await {
            outcome.unwrap_or_else(|e| panic!("{name}: concurrent identical put failed: {e}"));
        }
        assert_eq!(repo.get(&key2).await.expect("get").expect("stored"), object, "{name}");

        // The WAL inventory comes from listings alone: segments per timeline, gaps, history files.
        for wal in
            ["000000010000000000000004", "000000020000000000000005", "000000020000000100000000", "00000002.history"]
        {
            let k = keys::wal(&wal.parse().expect("name"));
            repo.put_create(&k, object.clone().into(), &header).await.expect("put");
        }
        let inv = repo.wal_inventory(pgwal::pg::WalSegmentSize::DEFAULT).await.expect("inventory");
        let tl1 = &inv.timelines[&pgwal::pg::TimelineId(1)];
        let segs = |v: &[u64]| v.iter().map(|&n| pgwal::pg::SegmentNo(n)).collect::<Vec<_>>();
        assert_eq!(tl1.segments, segs(&[1, 2, 4]), "{name}");
        assert_eq!(tl1.gaps(), vec![(pgwal::pg::SegmentNo(3), pgwal::pg::SegmentNo(3))], "{name}");
        assert_eq!(inv.timelines[&pgwal::pg::TimelineId(2)].segments, segs(&[5, 256]), "{name}: across log files");
        assert_eq!(inv.histories, vec![pgwal::pg::TimelineId(2)], "{name}");
    });
}

/// The suite's corruption checks need raw access to the objects.
fn corruption(name: &str, repo: &Repository, raw: &Arc<dyn object_store::ObjectStore>) {
    rt().block_on(async {
        repo.create_format().await.expect("format");
        let key = ObjectPath::from("wal/0000000100000000/000000010000000000000003");
        raw.put(&key, Bytes::from_static(b"not a pgwal object at all, no header").into()).await.expect("raw put");
        assert!(matches!(repo.read_header(&key).await, Err(Error::Corrupt { .. })), "{name}: garbage header");

        // A repository of a future format is refused rather than misread.
        let (future, _) = frame::encode(br#"{"format": 2, "created_by": "x", "created_at": "y"}"#, Compression::None)
            .expect("encode");
        raw.put(&keys::format(), Bytes::from(future).into()).await.expect("raw put");
        assert!(matches!(repo.check_format().await, Err(Error::UnsupportedFormat { found: 2, .. })), "{name}");
    });
}

#[test]
fn in_memory() {
    let stores: std::sync::Mutex<Vec<Arc<InMemory>>> = Default::default();
    conformance("memory", |_| {
        let mem = Arc::new(InMemory::new());
        stores.lock().expect("lock").push(mem.clone());
        Repository::new(Store { objects: mem, local_root: None }, "s3://mem/x".parse().expect("url"), retry())
    });
    let mem: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
    let repo =
        Repository::new(Store { objects: mem.clone(), local_root: None }, "s3://mem/x".parse().expect("url"), retry());
    corruption("memory", &repo, &mem);
}

#[test]
fn local_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance("file", |sub| {
        let url: RepoUrl = format!("file://{}/{sub}", dir.path().display()).parse().expect("url");
        // Read-only access never creates the directory: a missing one is unreachable.
        if sub == "missing" {
            let e = storage::open(&url, &StoreOptions::default(), Access::MustExist, Duration::from_secs(5));
            assert!(matches!(e, Err(Error::RepositoryMissing { .. })));
            assert!(!dir.path().join(sub).exists(), "MustExist must not create the directory");
        }
        let store = storage::open(&url, &StoreOptions::default(), Access::CreateIfMissing, Duration::from_secs(5))
            .expect("open");
        Repository::new(store, url, retry())
    });
    // No staging files (`<key>#N`) are left behind by successful puts.
    let leftovers: Vec<_> = walk(&dir.path().join("main")).into_iter().filter(|p| p.contains('#')).collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");

    // Only the repository's own directory is created, private, and only
    // under an existing parent: a typo in a parent starts nothing.
    use std::os::unix::fs::PermissionsExt;
    let typo: RepoUrl = format!("file://{}/mian/repo", dir.path().display()).parse().expect("url");
    let e = storage::open(&typo, &StoreOptions::default(), Access::CreateIfMissing, Duration::from_secs(5));
    assert!(matches!(&e, Err(Error::Config { message, .. }) if message.contains("does not exist")), "{e:?}");
    assert!(!dir.path().join("mian").exists(), "no parent created");
    let mode = std::fs::metadata(dir.path().join("main")).expect("created").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "a new repository directory is private");
    let e = storage::open(&typo, &StoreOptions::default(), Access::WriteExisting, Duration::from_secs(5));
    assert!(matches!(e, Err(Error::RepositoryMissing { .. })), "expire never creates");

    let url: RepoUrl = format!("file://{}/corrupt", dir.path().display()).parse().expect("url");
    let store =
        storage::open(&url, &StoreOptions::default(), Access::CreateIfMissing, Duration::from_secs(5)).expect("open");
    let raw = store.objects.clone();
    corruption("file", &Repository::new(store, url, retry()), &raw);
}

#[test]
fn s3_server() {
    let s3 = common::S3Server::start().expect("start s3s-fs");
    s3.create_bucket("conformance").expect("bucket");
    let opts = StoreOptions {
        s3: S3Options {
            endpoint: Some(s3.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(s3.access_key().into()),
            secret_access_key: Some(s3.secret_key().into()),
            session_token: None,
            allow_http: Some(true),
        },
        ..Default::default()
    };
    let open = |prefix: &str| {
        let url: RepoUrl = format!("s3://conformance/{prefix}").parse().expect("url");
        let store = storage::open(&url, &opts, Access::MustExist, Duration::from_secs(5)).expect("open");
        (store, url)
    };
    conformance("s3", |prefix| {
        let (store, url) = open(prefix);
        Repository::new(store, url, retry())
    });
    let (store, url) = open("corrupt");
    let raw = store.objects.clone();
    corruption("s3", &Repository::new(store, url, retry()), &raw);

    // Wrong credentials are an error, never "not in the archive".
    let bad = StoreOptions {
        s3: S3Options { secret_access_key: Some("wrong".into()), ..opts.s3.clone() },
        ..Default::default()
    };
    let url: RepoUrl = "s3://conformance/main".parse().expect("url");
    let store = storage::open(&url, &bad, Access::MustExist, Duration::from_secs(5)).expect("open");
    // A deadline far beyond the test's patience: a refusal must not be retried.
    let patient = RetryPolicy::with_deadline(Duration::from_secs(600)).quiet();
    let repo = Repository::new(store, url, patient);
    let err = rt().block_on(repo.require_exists());
    assert!(matches!(&err, Err(e @ Error::Storage { .. }) if !e.is_transient()), "bad credentials: {err:?}");
    let err = rt().block_on(repo.list_dirs(&ObjectPath::from("backup")));
    assert!(matches!(&err, Err(e @ Error::Storage { .. }) if !e.is_transient()), "bad credentials, list: {err:?}");

    // A missing bucket is named as such, not "no repository here".
    let url: RepoUrl = "s3://no-such-bucket/main".parse().expect("url");
    let store = storage::open(&url, &opts, Access::MustExist, Duration::from_secs(5)).expect("open");
    let repo = Repository::new(store, url, patient);
    let err = rt().block_on(repo.require_exists());
    let fault = match &err {
        Err(Error::Storage { source, .. }) => pgwal::error::classify_store_error(source),
        other => panic!("a missing bucket: {other:?}"),
    };
    assert_eq!(fault, pgwal::error::StoreFault::NoBucket);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
