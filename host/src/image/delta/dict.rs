//! Shared dictionaries for a delta. A file diffed against its own old version
//! alone cannot borrow from what is new elsewhere in the image: when a toolchain
//! changes, a hundred small binaries each carry their copy of the same new
//! library code. Whole-image compressors (`zstd --long` on a squashed tar) get
//! that for free; per-file deltas pay it a hundred times. A dictionary trained on
//! the new versions of such files, stored once in the delta and placed in front
//! of each file's base, gives it back while every file stays decodable alone.
//!
//! Files are grouped by kind (their first bytes) so that one dictionary serves
//! content that looks alike. Only kinds whose files share much across files get
//! one: ELF objects (the same library code linked into many) and gettext
//! catalogues (the same messages in many packages). Other files were measured to
//! gain almost nothing (debian bookworm -> trixie: 2.7 KB over 1,400 files) for a
//! codec call each that costs as much as compressing the dictionary.

/// Files above this size get no dictionary: they carry enough context of their own.
pub const FILE_LIMIT: u64 = 1 << 20;
/// A kind needs this many files to get a dictionary.
const MIN_FILES: usize = 8;
/// ... and this many bytes of them.
const MIN_BYTES: usize = 256 << 10;
/// Dictionary size bounds; between them, 1/16 of the sample bytes.
const MIN_SIZE: usize = 16 << 10;
const MAX_SIZE: usize = 512 << 10;

/// A file whose plain delta is under 1/MIN_CHANGE of its size is not offered a
/// dictionary: nearly unchanged (a rebuild), it gains next to nothing (debian
/// bookworm -> trixie: 15 KB over 105 such files; on python's security
/// refreshes most changed binaries are such rebuilds).
pub const MIN_CHANGE: u64 = 20;

/// Files below this size are encoded against a dictionary at [`SMALL_FILE_LEVEL`]
/// at most: zstd's strongest levels index every byte of the base into a binary
/// tree, and with a dictionary in front of a small file that is mostly the
/// dictionary, again for every file (a 60 KiB binary behind 512 KiB: 70 ms at
/// level 19, 14 ms at 12, for a delta 11% larger).
pub const SMALL_FILE: u64 = 128 << 10;
/// The level of the hash-chain match finders, which index a base cheaply.
pub const SMALL_FILE_LEVEL: u8 = 12;

/// The codec level for a file of `size` bytes encoded against a dictionary, given
/// the level asked for (0: the codec's default).
pub fn level(asked: u8, size: u64) -> u8 {
    if size >= SMALL_FILE {
        asked
    } else if asked == 0 {
        SMALL_FILE_LEVEL
    } else {
        asked.min(SMALL_FILE_LEVEL)
    }
}

/// What a file looks like, as far as sharing a dictionary goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An ELF object: executables, shared libraries, modules.
    Elf,
    /// A gettext message catalogue (`.mo`).
    Gettext,
}

/// The kind of a file starting with `head`, if it is one that gets a dictionary.
pub fn classify(head: &[u8]) -> Option<Kind> {
    if head.starts_with(b"\x7fELF") {
        Some(Kind::Elf)
    } else if head.starts_with(&[0xde, 0x12, 0x04, 0x95])
        || head.starts_with(&[0x95, 0x04, 0x12, 0xde])
    {
        Some(Kind::Gettext)
    } else {
        None
    }
}

/// A codec's base input for a step with a dictionary: the dictionary, then the
/// base content (docs/FORMAT.md); the one place both diff and patch build it.
pub fn behind(dict: &[u8], base: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dict.len() + base.len());
    out.extend_from_slice(dict);
    out.extend_from_slice(base);
    out
}

/// The size of the dictionary trained on `total` bytes of samples.
fn size_for(total: usize) -> usize {
    (total / 16).clamp(MIN_SIZE, MAX_SIZE)
}

/// Whether a kind whose files, `sample_bytes` of new content, wait for a
/// dictionary with plain deltas of `plain` bytes should get one. A dictionary
/// saved a fifth to a quarter of those deltas where it paid (debian bookworm ->
/// trixie 2.05 of 10.9 MB, python v4 -> v5 2.06 of 8.2 MB) and is stored at
/// about half its size or more, so deltas under twice its size cannot repay it
/// (python's security refreshes: a few hundred KB; training and trying it cost
/// 2 s there).
pub fn worth_training(plain: u64, sample_bytes: u64) -> bool {
    let size = size_for(usize::try_from(sample_bytes).unwrap_or(usize::MAX)) as u64;
    plain >= 2 * size
}

/// A dictionary trained on `samples` (the new contents of files of one kind), or
/// None when there are too few of them or training fails (degenerate input).
pub fn train(samples: &[&[u8]]) -> Option<Vec<u8>> {
    let total: usize = samples.iter().map(|s| s.len()).sum();
    if samples.len() < MIN_FILES || total < MIN_BYTES {
        return None;
    }
    let size = size_for(total);
    zstd::dict::from_samples(samples, size)
        .ok()
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_magic() {
        assert_eq!(classify(b"\x7fELF\x02\x01"), Some(Kind::Elf));
        assert_eq!(classify(&[0xde, 0x12, 0x04, 0x95, 0]), Some(Kind::Gettext));
        assert_eq!(classify(b"\x1f\x8b\x08\x00"), None);
        assert_eq!(classify(b"#!/bin/sh\n"), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn small_files_get_a_cheaper_level() {
        assert_eq!(level(0, 4096), SMALL_FILE_LEVEL);
        assert_eq!(level(19, 4096), SMALL_FILE_LEVEL);
        assert_eq!(level(3, 4096), 3);
        assert_eq!(level(0, SMALL_FILE), 0);
        assert_eq!(level(19, 1 << 20), 19);
    }

    #[test]
    fn training_needs_plain_deltas_of_twice_the_dictionary() {
        // 16 MiB of samples give a 512 KiB dictionary; 1 MiB of them, 64 KiB.
        assert!(!worth_training((1 << 20) - 1, 16 << 20));
        assert!(worth_training(1 << 20, 16 << 20));
        assert!(worth_training(128 << 10, 1 << 20));
        assert!(!worth_training(0, 1 << 20));
    }

    #[test]
    fn too_few_samples_give_no_dictionary() {
        let s = vec![0u8; 1 << 20];
        assert!(train(&[&s[..]]).is_none());
    }
}
