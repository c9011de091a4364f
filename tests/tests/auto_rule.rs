//! `diff --codec auto`'s rule (docs/ARCHITECTURE.md, "diff"): which built-in
//! codecs a file is offered, in which order, at which level.

use d4c_host::image::delta::diff::{auto_codecs, CodecChoice, AUTO_BOTH_LIMIT, LARGE_FILE_LEVEL};

fn choice() -> (tempfile::TempDir, CodecChoice) {
    let dir = tempfile::tempdir().unwrap();
    let c = d4c_tests::codecs_in(dir.path());
    let auto = CodecChoice::auto(&c).unwrap();
    (dir, auto)
}

fn names(tries: &[(&d4c_host::codec::Codec, u8)]) -> Vec<(String, u8)> {
    tries
        .iter()
        .map(|(c, l)| (c.name().to_string(), *l))
        .collect()
}

fn owned(v: &[(&str, u8)]) -> Vec<(String, u8)> {
    v.iter().map(|(n, l)| (n.to_string(), *l)).collect()
}

#[test]
fn auto_offers_gzip_first_both_built_ins_up_to_the_limit_and_two_levels_above() {
    let (_dir, auto) = choice();
    let gz = [0x1f, 0x8b, 8, 0];
    let elf = b"\x7fELF";
    assert_eq!(
        names(&auto_codecs(&auto, 1000, 1000, &gz, 0)),
        owned(&[("gzip", 0), ("bsdiff", 0), ("zstd-dict", 0)])
    );
    // ELF files get elf-refs in bsdiff's place.
    assert_eq!(
        names(&auto_codecs(&auto, 1000, 1000, elf, 7)),
        owned(&[("elf-refs", 7), ("zstd-dict", 7)])
    );
    assert_eq!(
        names(&auto_codecs(&auto, 1000, 1000, b"#!/bin/sh", 7)),
        owned(&[("bsdiff", 7), ("zstd-dict", 7)])
    );
    let big = AUTO_BOTH_LIMIT + 1;
    // Above the limit at the default level: zstd-dict fast, then at its default.
    assert_eq!(
        names(&auto_codecs(&auto, 1000, big, elf, 0)),
        owned(&[("zstd-dict", LARGE_FILE_LEVEL), ("zstd-dict", 0)])
    );
    // A level asked for is kept as is.
    assert_eq!(
        names(&auto_codecs(&auto, big, 1000, elf, 5)),
        owned(&[("zstd-dict", 5)])
    );
    let CodecChoice::Auto { bsdiff, .. } = &auto else {
        unreachable!()
    };
    let fixed = CodecChoice::Fixed(bsdiff.clone());
    assert_eq!(
        names(&auto_codecs(&fixed, big, big, &gz, 0)),
        owned(&[("bsdiff", 0)])
    );
}
