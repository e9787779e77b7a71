//! A fault-injecting [`ObjectStore`] wrapper for tests (neon's
//! `UnreliableWrapper`, made programmable): wraps any store and, per kind of
//! operation and key, fails the Nth call or the next K calls with a
//! transient or a permanent error, delays calls, cuts GET bodies short, and
//! counts every call. Errors look like the real ones, so that
//! [`crate::error::classify_store_error`] and the retry policy treat them as
//! they would a real store's.
//!
//! Compiled only for tests (the library's own, and through the `test-support`
//! feature that the crate's dev-dependency on itself turns on for `tests/`
//! and `benches/`): it is no part of the tool.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use super::Store;

/// A kind of store operation, as a fault rule selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put_opts` and the start of a multipart upload.
    Put,
    /// `get_opts` (whole objects and ranges).
    Get,
    /// `head` (a `get_opts` with `head: true`).
    Head,
    /// One location of `delete_stream` (what `delete` calls).
    Delete,
    /// `list` and `list_with_delimiter`; the key is the prefix.
    List,
    /// `copy_opts`; the key is the source.
    Copy,
}

/// What a rule does to a call it fires on.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fails as a throttled or overloaded server does (HTTP 503 SlowDown):
    /// worth retrying.
    Transient,
    /// Fails with an I/O error of this kind below a generic store error, as
    /// a timed-out request (`TimedOut`: worth retrying) or a local disk
    /// refusing (`PermissionDenied`: never retried) does.
    Io(std::io::ErrorKind),
    /// Fails as a refusal does (HTTP 403 AccessDenied): never retried.
    Denied,
    /// Answers "not found", whether or not the object is there.
    NotFound,
    /// Waits this long, then passes the call through.
    Delay(Duration),
    /// Passes a PUT or DELETE through, then answers as a timed-out request
    /// does: the change was made, the client cannot know (and retries).
    LostReply,
    /// Passes a GET through but ends its body after this many bytes, as a
    /// connection closed mid-transfer without an error would.
    Truncate(usize),
}

/// When and where a fault fires.
#[derive(Debug, Clone)]
pub struct Rule {
    op: Op,
    key_contains: Option<String>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Rule {
    /// A rule for every call of `op` that fires on each one (narrow it with
    /// [`Rule::matching`], [`Rule::nth`], [`Rule::after`], [`Rule::times`]).
    pub fn on(op: Op, fault: Fault) -> Rule {
        Rule { op, key_contains: None, skip: 0, times: None, fault }
    }

    /// Only calls whose key (or listed prefix) contains `pattern`.
    pub fn matching(self, pattern: &str) -> Rule {
        Rule { key_contains: Some(pattern.to_string()), ..self }
    }

    /// Lets the first `n` matching calls through.
    pub fn after(self, n: u64) -> Rule {
        Rule { skip: n, ..self }
    }

    /// Fires on `k` matching calls (after those [`Rule::after`] lets through), then never again.
    pub fn times(self, k: u64) -> Rule {
        Rule { times: Some(k), ..self }
    }

    /// Fires on the `n`th matching call only (1-based).
    pub fn nth(self, n: u64) -> Rule {
        self.after(n.saturating_sub(1)).times(1)
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.op == op && self.key_contains.as_deref().is_none_or(|p| key.contains(p))
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Rule, u64)>,
    calls: Vec<(Op, String)>,
    fired: Vec<(Op, String)>,
}

/// The wrapper. Clones share their rules and counts.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore { inner, state: Arc::default() }
    }

    /// Wraps an empty in-memory store.
    pub fn in_memory() -> FaultyStore {
        FaultyStore::new(Arc::new(object_store::memory::InMemory::new()))
    }

    /// A [`Store`] over this wrapper (not local: every read goes through it).
    pub fn store(&self) -> Store {
        Store::from_objects(Arc::new(self.clone()))
    }

    /// The wrapped store, to look at or prepare objects without faults.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Adds a rule; the first rule that fires on a call decides its fault.
    pub fn inject(&self, rule: Rule) {
        self.lock().rules.push((rule, 0));
    }

    /// Removes every rule (counts stay).
    pub fn heal(&self) {
        self.lock().rules.clear();
    }

    /// How many calls of `op` were made (including failed ones).
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|(o, _)| *o == op).count()
    }

    /// How many calls of `op` on keys containing `pattern` were made.
    pub fn calls_matching(&self, op: Op, pattern: &str) -> usize {
        self.lock().calls.iter().filter(|(o, k)| *o == op && k.contains(pattern)).count()
    }

    /// The calls a rule fired on, in order, with their keys.
    pub fn fired(&self) -> Vec<(Op, String)> {
        self.lock().fired.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding it has failed already.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts the call and returns the fault to apply, if any. Every
    /// matching rule counts the call, so that rules stay independent.
    fn decide(&self, op: Op, key: &str) -> Option<Fault> {
        let mut state = self.lock();
        state.calls.push((op, key.to_string()));
        let mut chosen = None;
        for (rule, seen) in state.rules.iter_mut() {
            if !rule.matches(op, key) {
                continue;
            }
            *seen += 1;
            let due = *seen > rule.skip && rule.times.is_none_or(|k| *seen <= rule.skip + k);
            if due && chosen.is_none() {
                chosen = Some(rule.fault.clone());
            }
        }
        if chosen.is_some() {
            state.fired.push((op, key.to_string()));
        }
        chosen
    }

    /// Applies the part of a fault that comes before the call: a delay, or
    /// an error instead of the call. `Truncate` is applied to the answer.
    async fn before(&self, op: Op, key: &str) -> Result<Option<Fault>> {
        match self.decide(op, key) {
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(after @ (Fault::Truncate(_) | Fault::LostReply)) => Ok(Some(after)),
            Some(fault) => Err(error(&fault, key)),
            None => Ok(None),
        }
    }
}

/// The error a fault stands for, shaped like a real store's.
fn error(fault: &Fault, key: &str) -> object_store::Error {
    let injected = |what: &str| format!("injected fault on '{key}': {what}");
    match fault {
        Fault::Transient => object_store::Error::Generic {
            store: "FaultyStore",
            source: injected("Server returned non-2xx status code: 503 Service Unavailable: SlowDown").into(),
        },
        Fault::Io(kind) => object_store::Error::Generic {
            store: "FaultyStore",
            source: Box::new(std::io::Error::new(*kind, injected(&std::io::Error::from(*kind).to_string()))),
        },
        Fault::Denied => object_store::Error::PermissionDenied {
            path: key.to_string(),
            source: injected("403 Forbidden: AccessDenied").into(),
        },
        Fault::LostReply => object_store::Error::Generic {
            store: "FaultyStore",
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                injected("reply lost, request timed out"),
            )),
        },
        Fault::NotFound | Fault::Delay(_) | Fault::Truncate(_) => {
            object_store::Error::NotFound { path: key.to_string(), source: injected("404 Not Found: NoSuchKey").into() }
        }
    }
}

/// A GET answer whose body ends after `keep` bytes; its metadata still
/// names the whole object, as a cut connection's would.
async fn truncated(result: GetResult, keep: usize) -> Result<GetResult> {
    let (meta, range) = (result.meta.clone(), result.range.clone());
    let (attributes, extensions) = (result.attributes.clone(), result.extensions.clone());
    let bytes = result.bytes().await?;
    let cut = bytes.slice(..keep.min(bytes.len()));
    Ok(GetResult {
        payload: GetResultPayload::Stream(stream::once(async move { Ok(cut) }).boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let after = self.before(Op::Put, location.as_ref()).await?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        match after {
            Some(lost @ Fault::LostReply) => Err(error(&lost, location.as_ref())),
            _ => Ok(result),
        }
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.before(Op::Put, location.as_ref()).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let fault = self.before(op, location.as_ref()).await?;
        let result = self.inner.get_opts(location, options).await?;
        match fault {
            Some(Fault::Truncate(keep)) => truncated(result, keep).await,
            _ => Ok(result),
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.before(Op::Get, location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        // Each location is decided on its own, then the survivors go to the
        // wrapped store one at a time (as `delete` sends them).
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let after = this.before(Op::Delete, location.as_ref()).await?;
                    let key = location.to_string();
                    let mut done = this.inner.delete_stream(stream::once(async { Ok(location) }).boxed());
                    let result = match done.next().await {
                        Some(result) => result,
                        None => Err(object_store::Error::Generic {
                            store: "FaultyStore",
                            source: "the wrapped store answered nothing to a delete".into(),
                        }),
                    };
                    match after {
                        Some(lost @ Fault::LostReply) => result.and(Err(error(&lost, &key))),
                        _ => result,
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let key = prefix.map_or_else(String::new, |p| p.to_string());
        let this = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move {
            match this.before(Op::List, &key).await {
                Ok(_) => this.inner.list(prefix.as_ref()),
                Err(e) => stream::once(async { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before(Op::List, prefix.map_or("", |p| p.as_ref())).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before(Op::Copy, from.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{classify_store_error, StoreFault};
    use object_store::ObjectStoreExt;

    fn key(s: &str) -> Path {
        Path::from(s)
    }

    #[test]
    fn injected_errors_classify_as_real_ones_do() {
        let class = |f: Fault| classify_store_error(&error(&f, "wal/x"));
        assert_eq!(class(Fault::Transient), StoreFault::Transient);
        assert_eq!(class(Fault::Io(std::io::ErrorKind::TimedOut)), StoreFault::Transient);
        assert_eq!(class(Fault::Io(std::io::ErrorKind::PermissionDenied)), StoreFault::Denied);
        assert_eq!(class(Fault::Denied), StoreFault::Denied);
        assert_eq!(class(Fault::LostReply), StoreFault::Transient);
        assert!(crate::error::is_missing_object(&error(&Fault::NotFound, "wal/x")));
    }

    #[tokio::test]
    async fn the_nth_matching_call_fails_and_only_it() {
        let store = FaultyStore::in_memory();
        store.inject(Rule::on(Op::Put, Fault::Denied).matching("wal/").nth(2));
        let put = |k: &'static str| {
            let store = store.clone();
            async move { store.put(&key(k), PutPayload::from_static(b"x")).await.map(|_| ()) }
        };
        assert!(put("wal/a").await.is_ok());
        assert!(put("other").await.is_ok(), "a key the rule does not match is not counted");
        assert!(matches!(put("wal/b").await, Err(object_store::Error::PermissionDenied { .. })));
        assert!(put("wal/c").await.is_ok());
        assert_eq!(store.calls(Op::Put), 4);
        assert_eq!(store.calls_matching(Op::Put, "wal/"), 3);
        assert_eq!(store.fired(), vec![(Op::Put, "wal/b".to_string())]);
        assert!(store.inner().head(&key("wal/b")).await.is_err(), "a failed put stores nothing");
    }

    #[tokio::test]
    async fn the_next_k_calls_fail_then_calls_pass() {
        let store = FaultyStore::in_memory();
        store.inner().put(&key("k"), PutPayload::from_static(b"data")).await.expect("put");
        store.inject(Rule::on(Op::Get, Fault::Transient).times(2));
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(store.get(&key("k")).await.is_ok());
        }
        assert_eq!(outcomes, [false, false, true, true]);
        assert_eq!(store.calls(Op::Get), 4);
    }

    #[tokio::test]
    async fn a_lost_reply_fails_a_put_that_was_made() {
        let store = FaultyStore::in_memory();
        store.inject(Rule::on(Op::Put, Fault::LostReply).nth(1));
        let result = store.put(&key("k"), PutPayload::from_static(b"data")).await;
        assert!(result.is_err(), "{result:?}");
        let stored = store.inner().get(&key("k")).await.expect("stored anyway").bytes().await.expect("body");
        assert_eq!(&stored[..], b"data");
    }

    #[tokio::test]
    async fn a_truncated_get_returns_a_prefix_of_the_object() {
        let store = FaultyStore::in_memory();
        store.inner().put(&key("k"), PutPayload::from_static(b"0123456789")).await.expect("put");
        store.inject(Rule::on(Op::Get, Fault::Truncate(4)).nth(1));
        let cut = store.get(&key("k")).await.expect("get");
        assert_eq!(cut.meta.size, 10, "the metadata still names the whole object");
        assert_eq!(&cut.bytes().await.expect("body")[..], b"0123");
        let whole = store.get(&key("k")).await.expect("get").bytes().await.expect("body");
        assert_eq!(&whole[..], b"0123456789");
    }

    #[tokio::test]
    async fn deletes_and_listings_fail_per_key() {
        let store = FaultyStore::in_memory();
        for k in ["d/a", "d/b"] {
            store.inner().put(&key(k), PutPayload::from_static(b"x")).await.expect("put");
        }
        store.inject(Rule::on(Op::Delete, Fault::Denied).matching("d/b"));
        store.inject(Rule::on(Op::List, Fault::Io(std::io::ErrorKind::TimedOut)).nth(1));
        assert!(store.delete(&key("d/a")).await.is_ok());
        assert!(store.delete(&key("d/b")).await.is_err());
        let first: Vec<_> = store.list(Some(&key("d"))).collect().await;
        assert!(matches!(first.as_slice(), [Err(_)]), "{first:?}");
        let second: Vec<_> = store.list(Some(&key("d"))).collect().await;
        let names: Vec<_> = second.into_iter().map(|m| m.expect("listed").location.to_string()).collect();
        assert_eq!(names, ["d/b"]);
        assert_eq!(store.calls(Op::Delete), 2);
        assert_eq!(store.calls(Op::List), 2);
    }
}
