//! Reading a large object (a backup's pack) from an object store in ranged
//! parts, several in flight at once: one stream per object is bound by the
//! round trip and the transfer window of one connection, so a 32 MiB pack
//! read whole at 10 ms each way mostly waits.
//!
//! The first part's answer names the object's size and its ETag; every other
//! part is asked for with `If-Match` on that ETag, and its answer must name
//! the same ETag and size (a store that ignores `If-Match` is caught there).
//! An object that changes between two parts is refused as corrupt, never
//! stitched together. Objects are create-only, so this means something
//! replaced it behind pgwal's back; the content is checked against its
//! SHA-256 after the read anyway. Each part is retried on its own.

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult};

use super::{storage_err, Repository};
use crate::error::{Error, Result};

/// Size of one ranged part.
pub const PART_SIZE: u64 = 8 << 20;

/// Parts of one object in flight at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// What the first part told about the whole object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    size: u64,
    e_tag: Option<String>,
}

impl Repository {
    /// Reads a whole object as [`Repository::get`] does, from an object
    /// store in ranged parts of [`PART_SIZE`], [`PARTS_IN_FLIGHT`] at once
    /// (a local object is mapped, as always). `None` if there is none.
    pub async fn get_in_parts(&self, key: &Path) -> Result<Option<Bytes>> {
        let keyring = self.sealing_for(key).await?;
        let Some(stored) = self.get_plain_in_parts(key).await? else { return Ok(None) };
        match keyring {
            Some(k) => Self::unseal(&k, key, &stored).map(Some),
            None => Ok(Some(stored)),
        }
    }

    async fn get_plain_in_parts(&self, key: &Path) -> Result<Option<Bytes>> {
        if let Some(mapped) = self.store.read_mapped(key) {
            return mapped;
        }
        let what = format!("reading '{key}'");
        // The first part's head, retried: it names the size and the ETag.
        let first = self
            .retry
            .run(&what, || async {
                let opts = GetOptions { range: Some(GetRange::Bounded(0..PART_SIZE)), ..Default::default() };
                match self.store.objects.get_opts(key, opts).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e) if crate::error::is_missing_object(&e) => Ok(None),
                    Err(e) => Err(storage_err("get", key)(e)),
                }
            })
            .await?;
        let Some(first) = first else { return Ok(None) };
        let id = Identity { size: first.meta.size, e_tag: first.meta.e_tag.clone() };
        let first_len = id.size.min(PART_SIZE);
        if first.range != (0..first_len) {
            return Err(Error::Corrupt {
                key: key.to_string(),
                reason: format!("asked for bytes 0..{first_len}, the store answered {:?}", first.range),
            });
        }
        let ranges: Vec<std::ops::Range<u64>> =
            (0..id.size.div_ceil(PART_SIZE)).map(|i| i * PART_SIZE..((i + 1) * PART_SIZE).min(id.size)).collect();
        let mut first = Some(first);
        let mut parts = futures::stream::iter(ranges)
            .map(|range| {
                let head = if range.start == 0 { first.take() } else { None };
                self.read_part(key, &what, &id, range, head)
            })
            .buffered(PARTS_IN_FLIGHT);
        if id.size <= PART_SIZE {
            return Ok(Some(parts.try_next().await?.unwrap_or_default()));
        }
        // Each part is copied into place as soon as those before it are:
        // at most PARTS_IN_FLIGHT parts are held besides the whole.
        let mut whole = BytesMut::with_capacity(id.size as usize);
        while let Some(part) = parts.try_next().await? {
            whole.extend_from_slice(&part);
        }
        Ok(Some(whole.freeze()))
    }

    /// One part: the body of `head` (the first part's response) or a new
    /// ranged read conditional on the object being the one `id` describes;
    /// a body cut short is read again the same way.
    async fn read_part(
        &self,
        key: &Path,
        what: &str,
        id: &Identity,
        range: std::ops::Range<u64>,
        head: Option<GetResult>,
    ) -> Result<Bytes> {
        let want = (range.end - range.start) as usize;
        if let Some(r) = head {
            match r.bytes().await {
                Ok(b) if b.len() == want => return Ok(b),
                // Cut short or failed midway: read that part again below.
                Ok(_) | Err(_) => {}
            }
        }
        self.retry
            .run(what, || async {
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: id.e_tag.clone(),
                    ..Default::default()
                };
                let r = match self.store.objects.get_opts(key, opts).await {
                    Ok(r) => r,
                    Err(object_store::Error::Precondition { .. }) => return Err(changed(key, "its ETag changed")),
                    Err(e) if crate::error::is_missing_object(&e) => return Err(changed(key, "it is gone")),
                    Err(e) => return Err(storage_err("get", key)(e)),
                };
                let now = Identity { size: r.meta.size, e_tag: r.meta.e_tag.clone() };
                if now != *id {
                    return Err(changed(
                        key,
                        &format!(
                            "{} bytes with ETag {} at first, {} bytes with ETag {} at bytes {}..{}",
                            id.size,
                            id.e_tag.as_deref().unwrap_or("-"),
                            now.size,
                            now.e_tag.as_deref().unwrap_or("-"),
                            range.start,
                            range.end
                        ),
                    ));
                }
                let bytes = r.bytes().await.map_err(storage_err("get", key))?;
                if bytes.len() != want {
                    // A body cut short without an error from the client: read it again.
                    let cut = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the body ended after {} of {want} bytes", bytes.len()),
                    );
                    return Err(storage_err("get", key)(object_store::Error::Generic {
                        store: "pgwal",
                        source: Box::new(cut),
                    }));
                }
                Ok(bytes)
            })
            .await
    }
}

/// The error for an object that changed while it was read in parts.
fn changed(key: &Path, how: &str) -> Error {
    Error::Corrupt { key: key.to_string(), reason: format!("the object changed while it was read in parts: {how}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// Objects of one byte, one part exactly, one byte more and several
    /// parts come back whole and in order; a missing one is `None`.
    #[tokio::test]
    async fn objects_of_any_size_come_back_whole() {
        let repo = Repository::in_memory();
        let part = PART_SIZE as usize;
        for size in [1, 1000, part, part + 1, 2 * part + part / 2] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
            let key = Path::from(format!("backup/b/pack/{size}"));
            repo.store.objects.put(&key, data.clone().into()).await.expect("put");
            let back = repo.get_plain_in_parts(&key).await.expect("get").expect("stored");
            assert_eq!(back.len(), size);
            assert!(back[..] == data[..], "{size} bytes");
        }
        assert!(repo.get_plain_in_parts(&Path::from("backup/b/pack/none")).await.expect("get").is_none());
    }
}
