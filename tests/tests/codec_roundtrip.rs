//! The built-in codecs as wasm components, through the sandboxed host: round trips
//! on real binaries from Debian packages and on random edits, merge, determinism.

use std::sync::OnceLock;

use d4c_host::codec::{Codec, Codecs};
use d4c_host::digest::Digest;
use proptest::prelude::*;

fn codecs() -> &'static Codecs {
    static C: OnceLock<(tempfile::TempDir, Codecs)> = OnceLock::new();
    let (_, c) = C.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let c = d4c_tests::codecs_in(dir.path());
        (dir, c)
    });
    c
}

fn builtin(name: &str) -> Codec {
    codecs().builtin(name).unwrap()
}

fn round_trip(codec: &Codec, old: &[u8], new: &[u8]) -> Vec<u8> {
    round_trip_at(codec, old, new, 3)
}

fn round_trip_at(codec: &Codec, old: &[u8], new: &[u8], level: u8) -> Vec<u8> {
    let delta = codec
        .diff(old, new, level)
        .unwrap_or_else(|e| panic!("{e}"));
    let back = codec
        .patch_checked(old, &delta, &Digest::of(new))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, new);
    delta
}

/// libcrypto from the three newest libssl3 packages Debian offers.
fn libcrypto() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        d4c_tests::debian_series("libssl3", "usr/lib/x86_64-linux-gnu/libcrypto.so.3", 3)
    })
}

#[test]
fn real_library_versions_round_trip_with_small_deltas() {
    let v = libcrypto();
    for name in ["bsdiff", "elf-refs", "zstd-dict"] {
        let codec = builtin(name);
        for pair in v.windows(2) {
            assert_ne!(pair[0], pair[1], "the versions should differ");
            let delta = round_trip(&codec, &pair[0], &pair[1]);
            // A security update of libcrypto changes little; a delta codec that works
            // at all stays far below the file's own size.
            assert!(
                delta.len() * 5 < pair[1].len(),
                "{name}: delta {} bytes for a {} byte file",
                delta.len(),
                pair[1].len()
            );
        }
    }
}

#[test]
fn bsdiff_merge_of_real_deltas_equals_direct_patching() {
    let v = libcrypto();
    let codec = builtin("bsdiff");
    let d12 = codec.diff(&v[0], &v[1], 3).unwrap();
    let d23 = codec.diff(&v[1], &v[2], 3).unwrap();
    let d13 = codec.merge(&d12, &d23).unwrap();
    let via_two = codec
        .patch(&codec.patch(&v[0], &d12).unwrap(), &d23)
        .unwrap();
    let via_merge = codec.patch(&v[0], &d13).unwrap();
    assert_eq!(via_two, v[2]);
    assert_eq!(via_merge, v[2]);
    // Merging the merged delta with another keeps composing (a longer chain).
    let d31 = codec.diff(&v[2], &v[0], 3).unwrap();
    let d11 = codec.merge(&d13, &d31).unwrap();
    assert_eq!(codec.patch(&v[0], &d11).unwrap(), v[0]);
}

#[test]
fn elf_refs_beats_bsdiff_on_real_library_updates_and_merges_or_declines() {
    let v = libcrypto();
    let (elf, bsdiff) = (builtin("elf-refs"), builtin("bsdiff"));
    for pair in v.windows(2) {
        let d = round_trip(&elf, &pair[0], &pair[1]);
        let b = bsdiff.diff(&pair[0], &pair[1], 3).unwrap();
        // The rewrite of code references is what the codec is for: on a real
        // update it must pay, not fall back to its plain bsdiff pass.
        assert!(
            d.len() < b.len(),
            "elf-refs {} bytes, bsdiff {}",
            d.len(),
            b.len()
        );
    }
    // A merge either composes exactly or declines (the upper delta moved the
    // middle file's addresses through its own map); d4c then keeps both steps.
    let d12 = elf.diff(&v[0], &v[1], 3).unwrap();
    let d23 = elf.diff(&v[1], &v[2], 3).unwrap();
    match elf.merge(&d12, &d23) {
        Ok(d13) => assert_eq!(elf.patch(&v[0], &d13).unwrap(), v[2]),
        Err(e) => assert_eq!(e.kind, d4c_host::codec::ErrorKind::Unsupported, "{e}"),
    }
}

/// An unchanged file beyond the reach of zstd's level-19 match tables (2^24
/// entries): containerd's 48 MB Go binary, which scripts/setup installs. With
/// tables sized to the level alone (zstd-dict 1.0.0) it cost 1.69 MB.
#[test]
fn zstd_dict_encodes_an_unchanged_large_binary_in_a_few_kilobytes() {
    let path = "/usr/bin/containerd";
    let old = std::fs::read(path).unwrap_or_else(|e| panic!("{path} (scripts/setup): {e}"));
    assert!(old.len() > 32 << 20, "{path} is only {} bytes", old.len());
    // A copy: zstd finds no match between a prefix and the same bytes in place.
    let new = old.clone();
    let delta = round_trip_at(&builtin("zstd-dict"), &old, &new, 0);
    assert!(delta.len() < 16 << 10, "delta {} bytes", delta.len());
}

/// AArch64 code (BL/B and ADRP rewritten): libcrypto from Debian's arm64
/// builds of the two newest libssl3 packages.
#[test]
fn elf_refs_beats_bsdiff_on_a_real_aarch64_library_update() {
    let v = d4c_tests::debian_foreign_series(
        "libssl3",
        "arm64",
        "usr/lib/aarch64-linux-gnu/libcrypto.so.3",
        2,
    );
    assert_eq!(&v[1][18..20], &[183, 0], "an AArch64 ELF (e_machine 183)");
    let d = round_trip(&builtin("elf-refs"), &v[0], &v[1]);
    let b = builtin("bsdiff").diff(&v[0], &v[1], 3).unwrap();
    assert!(
        d.len() < b.len(),
        "elf-refs {} bytes, bsdiff {}",
        d.len(),
        b.len()
    );
}

#[test]
fn merge_rejects_deltas_that_do_not_chain() {
    let codec = builtin("bsdiff");
    let d1 = codec.diff(b"aaaa", b"bbbbbb", 3).unwrap();
    let d2 = codec.diff(b"cc", b"dd", 3).unwrap();
    let e = codec.merge(&d1, &d2).unwrap_err();
    assert_eq!(e.kind, d4c_host::codec::ErrorKind::InvalidInput, "{e}");
    let e = builtin("zstd-dict").merge(&d1, &d2).unwrap_err();
    assert_eq!(e.kind, d4c_host::codec::ErrorKind::Unsupported, "{e}");
}

#[test]
fn same_inputs_give_the_same_delta_bytes() {
    let v = libcrypto();
    let other = d4c_tests::codecs_in(tempfile::tempdir().unwrap().path());
    for name in ["bsdiff", "elf-refs", "zstd-dict"] {
        let a = builtin(name).diff(&v[0], &v[1], 0).unwrap();
        let b = builtin(name).diff(&v[0], &v[1], 0).unwrap();
        let c = other.builtin(name).unwrap().diff(&v[0], &v[1], 0).unwrap();
        assert_eq!(Digest::of(&a), Digest::of(&b), "{name}");
        assert_eq!(Digest::of(&a), Digest::of(&c), "{name}");
    }
}

#[test]
fn wasm_output_equals_native_output() {
    // The same crate built natively gives the same bytes: the sandbox changes nothing.
    use d4c_codec_guest::Codec as _;
    let v = libcrypto();
    let (old, new) = (&v[0][..1 << 20], &v[1][..1 << 20]);
    let native = d4c_codec_bsdiff::Bsdiff::diff(old, new, 3).unwrap();
    assert_eq!(builtin("bsdiff").diff(old, new, 3).unwrap(), native);
    let native = d4c_codec_zstd_dict::ZstdDict::diff(old, new, 3).unwrap();
    assert_eq!(builtin("zstd-dict").diff(old, new, 3).unwrap(), native);
    // Whole files: elf-refs models only complete ELF files.
    let native = d4c_codec_elf_refs::ElfRefs::diff(&v[0], &v[1], 3).unwrap();
    assert_eq!(builtin("elf-refs").diff(&v[0], &v[1], 3).unwrap(), native);
}

#[test]
fn edge_cases_round_trip() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    for name in ["bsdiff", "elf-refs", "zstd-dict"] {
        let c = builtin(name);
        round_trip(&c, b"", b"");
        round_trip(&c, b"", &data);
        round_trip(&c, &data, b"");
        round_trip(&c, &data, &data);
        round_trip(&c, &[0u8; 100_000], &[0u8; 100_001]);
        round_trip(&c, b"x", b"y");
    }
}

#[test]
fn corrupt_deltas_are_errors_not_traps() {
    let v = libcrypto();
    let (old, new) = (&v[0][..200_000], &v[1][..200_000]);
    for name in ["bsdiff", "elf-refs", "zstd-dict"] {
        let c = builtin(name);
        let d = c.diff(old, new, 3).unwrap();
        let mut bad = d.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        for delta in [&d[..d.len() / 2], &bad[..], b"garbage"] {
            match c.patch_checked(old, delta, &Digest::of(new)) {
                Ok(_) => panic!("{name}: corrupt delta accepted"),
                Err(e) => assert!(
                    matches!(
                        e.kind,
                        d4c_host::codec::ErrorKind::InvalidInput
                            | d4c_host::codec::ErrorKind::WrongOutput
                    ),
                    "{name}: {e}"
                ),
            }
        }
        // The right delta against the wrong base is refused.
        assert!(c.patch(&old[1..], &d).is_err(), "{name}");
    }
}

/// One random edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Replace(usize, Vec<u8>),
    Move(usize, usize, usize),
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len();
        match e {
            Edit::Insert(at, b) => {
                let at = if n == 0 { 0 } else { at % (n + 1) };
                v.splice(at..at, b.iter().copied());
            }
            Edit::Delete(at, len) if n > 0 => {
                let at = at % n;
                let end = (at + len).min(n);
                v.drain(at..end);
            }
            Edit::Replace(at, b) if n > 0 => {
                let at = at % n;
                for (i, x) in b.iter().enumerate().take(n - at) {
                    v[at + i] = *x;
                }
            }
            Edit::Move(from, len, to) if n > 0 => {
                let from = from % n;
                let end = (from + len).min(n);
                let block: Vec<u8> = v.drain(from..end).collect();
                let to = to % (v.len() + 1);
                v.splice(to..to, block);
            }
            _ => {}
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 0usize..2000).prop_map(|(a, l)| Edit::Delete(a, l)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(a, b)| Edit::Replace(a, b)),
        (any::<usize>(), 1usize..3000, any::<usize>()).prop_map(|(a, l, t)| Edit::Move(a, l, t)),
    ]
}

/// Old data with structure (repeats and text-like runs), as real files have.
fn base() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..5000),
        (any::<u64>(), 1000usize..40_000).prop_map(|(seed, n)| {
            let mut x = seed | 1;
            (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i % 64 < 40 {
                        b"abcdefgh"[(x % 8) as usize]
                    } else {
                        x as u8
                    }
                })
                .collect()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_edits_round_trip(old in base(), edits in prop::collection::vec(edit(), 0..8)) {
        let new = apply(old.clone(), &edits);
        for name in ["bsdiff", "elf-refs", "zstd-dict"] {
            round_trip(&builtin(name), &old, &new);
        }
    }

    #[test]
    fn random_merges_compose(
        v1 in base(),
        e12 in prop::collection::vec(edit(), 0..6),
        e23 in prop::collection::vec(edit(), 0..6),
    ) {
        let v2 = apply(v1.clone(), &e12);
        let v3 = apply(v2.clone(), &e23);
        for name in ["bsdiff", "elf-refs"] {
            let c = builtin(name);
            let d12 = c.diff(&v1, &v2, 1).unwrap();
            let d23 = c.diff(&v2, &v3, 1).unwrap();
            let d13 = c.merge(&d12, &d23).unwrap();
            prop_assert_eq!(c.patch(&c.patch(&v1, &d12).unwrap(), &d23).unwrap(), v3.clone());
            prop_assert_eq!(c.patch(&v1, &d13).unwrap(), v3.clone());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Edits inside a real library's code: its section headers then describe
    /// the new bytes only roughly, and the rewrite must still invert exactly.
    #[test]
    fn elf_refs_round_trips_edited_real_code(edits in prop::collection::vec(edit(), 1..6)) {
        let old = &libcrypto()[0];
        let (text, len) = (0x10_0000, 0x8_0000);
        let mut new = old[..text].to_vec();
        new.extend(apply(old[text..text + len].to_vec(), &edits));
        new.extend_from_slice(&old[text + len..]);
        round_trip(&builtin("elf-refs"), old, &new);
    }
}

#[test]
fn retired_builtins_still_decode_and_current_builds_make_the_same_deltas() {
    use d4c_host::digest::Digest;
    for r in d4c_host::codec::retired_components() {
        // An input pair the codec applies to.
        let v = match r.name {
            "gzip" => {
                let (old, new) = man_page_versions();
                vec![old, new]
            }
            _ => libcrypto().to_vec(),
        };
        // Found by digest alone, as a delta's codec table names it.
        let digest = Digest::of(r.bytes);
        let retired = codecs().get(&digest, r.name).unwrap();
        assert!(codecs().held().unwrap().contains(&digest));
        let current = builtin(r.name);
        assert_ne!(current.digest(), digest);
        let old_delta = retired.diff(&v[0], &v[1], 3).unwrap();
        // The current build decodes what the retired one made, and (bsdiff's
        // retirement changed only its speed, gzip's its size limit and then
        // Go's streams) makes the very same bytes.
        assert_eq!(current.patch(&v[0], &old_delta).unwrap(), v[1]);
        assert_eq!(current.diff(&v[0], &v[1], 3).unwrap(), old_delta);
        assert_eq!(retired.patch(&v[0], &old_delta).unwrap(), v[1]);
    }
}

/// A real man page as Debian ships it (gzip -9n), and the same page after an
/// edit, compressed by the same tool.
fn man_page_versions() -> (Vec<u8>, Vec<u8>) {
    let version = &d4c_tests::debian_versions("openssl").unwrap()[0];
    let root = d4c_tests::debian_root("openssl", version).unwrap();
    let old = std::fs::read(root.join("usr/share/man/man1/openssl-rand.1ssl.gz")).unwrap();
    let gzip = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new("gzip")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let text = String::from_utf8(gzip(&["-dc"], &old)).unwrap();
    let new = gzip(&["-9n"], text.replace("random", "pseudo-random").as_bytes());
    (old, new)
}

#[test]
fn gzip_rebuilds_real_gzip_files_bit_exact_in_wasm_as_natively() {
    use d4c_codec_guest::Codec as _;
    let (old, new) = man_page_versions();
    let c = builtin("gzip");
    let delta = round_trip(&c, &old, &new);
    // The edit touches a few words; the deflate streams differ from there on.
    assert!(
        delta.len() * 5 < new.len(),
        "delta {} of {}",
        delta.len(),
        new.len()
    );
    assert_eq!(delta, d4c_codec_gzip::Gzip::diff(&old, &new, 3).unwrap());
    // Not a gzip file, or one zlib does not produce: `unsupported`, so that
    // `auto` quietly takes another codec.
    let e = c.diff(&old, b"plain text", 0).unwrap_err();
    assert_eq!(e.kind, d4c_host::codec::ErrorKind::Unsupported, "{e}");
    // Corrupt deltas and the wrong base are errors, not traps or other bytes.
    let mut bad = delta.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    for (base, d) in [
        (&old[..], &bad[..]),
        (&old[..], &delta[..9]),
        (&new[..], &delta[..]),
    ] {
        let e = c.patch_checked(base, d, &Digest::of(&new)).unwrap_err();
        assert_ne!(e.kind, d4c_host::codec::ErrorKind::Trap, "{e}");
    }
}

#[test]
fn gzip_rebuilds_gnu_gzip_changelogs_of_two_real_releases() {
    // Debian compresses changelogs with GNU gzip, whose blocks zlib alone does
    // not reproduce past the first 4096 symbols; the codec records where they end.
    use d4c_codec_guest::Codec as _;
    let v = d4c_tests::debian_series("libssl3", "usr/share/doc/libssl3/changelog.Debian.gz", 2);
    let c = builtin("gzip");
    let delta = round_trip(&c, &v[0], &v[1]);
    assert!(
        delta.len() * 5 < v[1].len(),
        "delta {} of {}",
        delta.len(),
        v[1].len()
    );
    assert_eq!(delta[8] & 2, 2, "the delta should carry block ends");
    assert_eq!(delta, d4c_codec_gzip::Gzip::diff(&v[0], &v[1], 3).unwrap());
}
