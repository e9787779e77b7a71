//! Block-level change detection for diff/incr backups, by content: every
//! relation file gets a block map (one 16-byte BLAKE3 fingerprint per 8 KiB
//! block, in file order), and a block whose fingerprint and length equal the
//! parent's at the same block number is not stored again but referenced
//! where the parent's bytes really are.
//!
//! Content, not page LSNs: a page that only got hint bits (no checksums, no
//! `wal_log_hints`), a file copied with its old LSNs (`CREATE DATABASE ...
//! STRATEGY FILE_COPY`), a reused relfilenode, a torn page read while being
//! written: each differs in content and is stored, so the assembled file is
//! always exactly the bytes read now, as a full backup would hold them.
//!
//! Pure: bytes and extents in, decisions and extents out (the packer does
//! the reading and storing).

use crate::repo::backup::{BackupId, Extent};

/// PostgreSQL's page size (`BLCKSZ`), the unit a block map fingerprints.
pub const BLOCK: u64 = 8192;

/// Bytes per block-map entry.
pub const FINGERPRINT: usize = 16;

/// One block's fingerprint: BLAKE3 truncated to 16 bytes (a chance
/// collision among 2^64 blocks is about 2^-64: far below a disk's error rate).
pub fn fingerprint(block: &[u8]) -> [u8; FINGERPRINT] {
    let hash = blake3::hash(block);
    let mut out = [0u8; FINGERPRINT];
    out.copy_from_slice(&hash.as_bytes()[..FINGERPRINT]);
    out
}

/// Number of blocks (the last possibly partial) of a file of `size` bytes.
pub fn blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// What the parent backup holds of one file, with every extent naming the
/// backup whose pack really holds the bytes (so that a child's reference is
/// always one hop, however long the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentFile {
    /// Size in the parent.
    pub size: u64,
    /// Hex SHA-256 of the whole file in the parent.
    pub sha256: String,
    /// Where its bytes are, in file order, each with `backup` set.
    pub extents: Vec<Extent>,
    /// Its block map (16 bytes per block), if the parent wrote one.
    pub map: Option<Vec<u8>>,
}

impl ParentFile {
    /// The parent's file entry as seen from a child: extents resolved
    /// against `holder` (the parent's own ID for extents in its own packs).
    /// `None` when the entry does not hold together (extents that do not add
    /// up to its size): the child then stores the file whole. A map of the
    /// wrong length is dropped the same way.
    pub fn resolve(
        holder: &BackupId,
        size: u64,
        sha256: &str,
        extents: &[Extent],
        map: Option<Vec<u8>>,
    ) -> Option<ParentFile> {
        let total = extents.iter().try_fold(0u64, |t, e| t.checked_add(e.size))?;
        if total != size {
            return None;
        }
        let extents = extents
            .iter()
            .map(|e| Extent { backup: Some(e.source(holder).clone()), ..e.clone() })
            .filter(|e| e.size > 0)
            .collect();
        let map = map.filter(|m| m.len() as u64 == blocks(size) * FINGERPRINT as u64);
        Some(ParentFile { size, sha256: sha256.to_string(), extents, map })
    }

    /// Whether block `index` of the new file, `len` bytes with fingerprint
    /// `fp`, is the parent's block `index`: same length, same fingerprint.
    pub fn same_block(&self, index: u64, len: u64, fp: &[u8; FINGERPRINT]) -> bool {
        let Some(map) = &self.map else { return false };
        let start = index * BLOCK;
        if start >= self.size || (self.size - start).min(BLOCK) != len {
            return false;
        }
        let at = (index as usize) * FINGERPRINT;
        map.get(at..at + FINGERPRINT) == Some(&fp[..])
    }

    /// The parent's extents for bytes `offset..offset + len` of the file.
    pub fn slice(&self, offset: u64, len: u64) -> Vec<Extent> {
        let (mut pos, end) = (0u64, offset + len);
        let mut out = Vec::new();
        for e in &self.extents {
            let (lo, hi) = (pos, pos + e.size);
            pos = hi;
            if hi <= offset {
                continue;
            }
            if lo >= end {
                break;
            }
            let from = offset.max(lo);
            let to = end.min(hi);
            out.push(Extent { offset: e.offset + (from - lo), size: to - from, ..e.clone() });
        }
        out
    }
}

/// A file's extents as they are found, in file order: an extent that
/// continues the last one in the same pack of the same backup extends it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extents(pub Vec<Extent>);

impl Extents {
    /// Appends `e`, merging it into the last extent when it continues it.
    pub fn push(&mut self, e: Extent) {
        if e.size == 0 {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.backup == e.backup && last.pack == e.pack && last.offset + last.size == e.offset => {
                last.size += e.size
            }
            _ => self.0.push(e),
        }
    }

    /// Appends each of `es`.
    pub fn extend(&mut self, es: impl IntoIterator<Item = Extent>) {
        for e in es {
            self.push(e);
        }
    }
}

/// Blocks of the new file that equal the parent's, collected as one run
/// until a changed block (or the end) closes it; a closed run becomes the
/// parent's extents for it, so a long unchanged stretch is a few extents.
#[derive(Debug, Default)]
pub struct Run {
    span: Option<(u64, u64)>,
}

impl Run {
    /// Block `index` (`len` bytes) is the parent's; `out` gets the run so
    /// far first if this block does not continue it.
    pub fn add(&mut self, parent: &ParentFile, index: u64, len: u64, out: &mut Extents) {
        let start = index * BLOCK;
        match &mut self.span {
            Some((_, end)) if *end == start => *end = start + len,
            _ => {
                self.close(parent, out);
                self.span = Some((start, start + len));
            }
        }
    }

    /// Ends the run: its bytes go to `out` as the parent's extents.
    pub fn close(&mut self, parent: &ParentFile, out: &mut Extents) {
        if let Some((start, end)) = self.span.take() {
            out.extend(parent.slice(start, end - start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> BackupId {
        s.parse().expect("id")
    }

    fn block(seed: u8) -> Vec<u8> {
        (0..BLOCK as usize).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn map_of(blocks: &[Vec<u8>]) -> Vec<u8> {
        blocks.iter().flat_map(|b| fingerprint(b)).collect()
    }

    /// A child of a file stored as `extents` of `holder`, with the blocks `content`.
    fn parent_of(holder: &BackupId, content: &[Vec<u8>], extents: &[Extent]) -> ParentFile {
        let size = content.iter().map(|b| b.len() as u64).sum();
        ParentFile::resolve(holder, size, "ab", extents, Some(map_of(content))).expect("consistent")
    }

    /// Runs the planner as the packer does: each block either the parent's
    /// or stored in this backup's pack 0 at the next offset.
    fn plan(parent: &ParentFile, new: &[Vec<u8>]) -> Vec<Extent> {
        let (mut out, mut run, mut own_at) = (Extents::default(), Run::default(), 0u64);
        for (i, b) in new.iter().enumerate() {
            let len = b.len() as u64;
            if parent.same_block(i as u64, len, &fingerprint(b)) {
                run.add(parent, i as u64, len, &mut out);
            } else {
                run.close(parent, &mut out);
                out.push(Extent::own(0, own_at, len));
                own_at += len;
            }
        }
        run.close(parent, &mut out);
        out.0
    }

    #[test]
    fn unchanged_blocks_point_at_the_parent_changed_ones_are_stored() {
        let full = id("20261123T074000F");
        let old: Vec<Vec<u8>> = (0..4).map(block).collect();
        let parent = parent_of(&full, &old, &[Extent::own(2, 100, 4 * BLOCK)]);
        let mut new = old.clone();
        new[2][17] ^= 1; // a hint bit: same LSN, other content
        let at = |off: u64, size: u64| Extent { backup: Some(full.clone()), ..Extent::own(2, 100 + off, size) };
        assert_eq!(
            plan(&parent, &new),
            vec![at(0, 2 * BLOCK), Extent::own(0, 0, BLOCK), at(3 * BLOCK, BLOCK)],
            "blocks 0-1 one extent, block 2 stored, block 3 the parent's"
        );
        assert_eq!(plan(&parent, &old), vec![at(0, 4 * BLOCK)], "an unchanged file is one extent of the parent");
    }

    #[test]
    fn references_resolve_through_the_parent_to_the_grandparent() {
        let (full, incr) = (id("20261123T074000F"), id("20261124T074000I"));
        let content: Vec<Vec<u8>> = (0..3).map(block).collect();
        // The incr holds block 1 itself; blocks 0 and 2 are in the full's pack 5.
        let extents = vec![
            Extent { backup: Some(full.clone()), ..Extent::own(5, 0, BLOCK) },
            Extent::own(0, 4096, BLOCK),
            Extent { backup: Some(full.clone()), ..Extent::own(5, 2 * BLOCK, BLOCK) },
        ];
        let parent = parent_of(&incr, &content, &extents);
        assert_eq!(
            plan(&parent, &content),
            vec![
                Extent { backup: Some(full.clone()), ..Extent::own(5, 0, BLOCK) },
                Extent { backup: Some(incr.clone()), ..Extent::own(0, 4096, BLOCK) },
                Extent { backup: Some(full), ..Extent::own(5, 2 * BLOCK, BLOCK) },
            ],
            "every reference names the backup that holds the bytes: one hop"
        );
    }

    #[test]
    fn slices_cut_across_extents() {
        let full = id("20261123T074000F");
        let parent = ParentFile::resolve(
            &full,
            3 * BLOCK,
            "ab",
            &[Extent::own(1, 0, BLOCK + 10), Extent::own(2, 0, 2 * BLOCK - 10)],
            None,
        )
        .expect("consistent");
        let b = |pack, offset, size| Extent { backup: Some(full.clone()), ..Extent::own(pack, offset, size) };
        assert_eq!(parent.slice(BLOCK, BLOCK), vec![b(1, BLOCK, 10), b(2, 0, BLOCK - 10)]);
        assert_eq!(parent.slice(0, 3 * BLOCK), vec![b(1, 0, BLOCK + 10), b(2, 0, 2 * BLOCK - 10)]);
        assert_eq!(parent.slice(2 * BLOCK, BLOCK), vec![b(2, BLOCK - 10, BLOCK)]);
    }

    #[test]
    fn growth_shrink_and_re_extension() {
        let full = id("20261123T074000F");
        let old: Vec<Vec<u8>> = (0..3).map(block).collect();
        let parent = parent_of(&full, &old, &[Extent::own(0, 0, 3 * BLOCK)]);
        let at = |off: u64, size: u64| Extent { backup: Some(full.clone()), ..Extent::own(0, off, size) };
        // Grown: the extra blocks are new.
        let mut grown = old.clone();
        grown.push(block(9));
        assert_eq!(plan(&parent, &grown), vec![at(0, 3 * BLOCK), Extent::own(0, 0, BLOCK)]);
        // Shrunk: the new size ends the extents.
        assert_eq!(plan(&parent, &old[..1]), vec![at(0, BLOCK)]);
        // Truncated and extended again with other content: stored.
        let re: Vec<Vec<u8>> = vec![old[0].clone(), block(7), block(8)];
        assert_eq!(plan(&parent, &re), vec![at(0, BLOCK), Extent::own(0, 0, 2 * BLOCK)]);
        // A partial last block (read while being extended) never matches a full one.
        let torn = vec![old[0].clone(), old[1][..4096].to_vec()];
        assert_eq!(plan(&parent, &torn), vec![at(0, BLOCK), Extent::own(0, 0, 4096)]);
        // And an equal block at another position is not the same block.
        let moved = vec![old[1].clone(), old[0].clone()];
        assert_eq!(plan(&parent, &moved), vec![Extent::own(0, 0, 2 * BLOCK)]);
    }

    #[test]
    fn without_a_usable_parent_map_everything_is_stored() {
        let full = id("20261123T074000F");
        let content: Vec<Vec<u8>> = (0..2).map(block).collect();
        let no_map = ParentFile::resolve(&full, 2 * BLOCK, "ab", &[Extent::own(0, 0, 2 * BLOCK)], None).expect("ok");
        assert_eq!(plan(&no_map, &content), vec![Extent::own(0, 0, 2 * BLOCK)]);
        let short_map = ParentFile::resolve(
            &full,
            2 * BLOCK,
            "ab",
            &[Extent::own(0, 0, 2 * BLOCK)],
            Some(fingerprint(&content[0]).to_vec()),
        )
        .expect("ok");
        assert_eq!(short_map.map, None, "a map of the wrong length is not trusted");
        assert_eq!(plan(&short_map, &content), vec![Extent::own(0, 0, 2 * BLOCK)]);
        assert_eq!(
            ParentFile::resolve(&full, 2 * BLOCK, "ab", &[Extent::own(0, 0, BLOCK)], None),
            None,
            "extents that do not add up: no parent entry, the file is stored whole"
        );
    }

    #[test]
    fn extents_coalesce_only_when_contiguous_in_one_pack_of_one_backup() {
        let full = id("20261123T074000F");
        let mut x = Extents::default();
        x.push(Extent::own(0, 0, 10));
        x.push(Extent::own(0, 10, 5));
        x.push(Extent::own(0, 20, 5));
        x.push(Extent { backup: Some(full.clone()), ..Extent::own(0, 25, 5) });
        x.push(Extent::own(1, 30, 5));
        x.push(Extent::own(1, 30, 0));
        assert_eq!(
            x.0,
            vec![
                Extent::own(0, 0, 15),
                Extent::own(0, 20, 5),
                Extent { backup: Some(full), ..Extent::own(0, 25, 5) },
                Extent::own(1, 30, 5)
            ]
        );
    }
}
