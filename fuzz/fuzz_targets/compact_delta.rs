//! A compact delta (`update::compact`) from hostile bytes, decoded against a
//! small real base tree: it must be refused with an error or rebuild exactly the
//! bytes whose digest the caller expects, never panic or allocate what a length
//! field claims.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use d4c_host::digest::Digest;
use d4c_host::image::entry::{image_id, Data, Entry, Kind};
use d4c_host::image::format::{Header, ImageKind};
use d4c_host::update::compact;
use libfuzzer_sys::fuzz_target;

fn base() -> &'static Header {
    static BASE: OnceLock<Header> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut entries = vec![Entry::dir("")];
        for i in 0..50 {
            let content = format!("file {i}");
            entries.push(Entry {
                kind: Kind::File,
                size: Some(content.len() as u64),
                digest: Some(Digest::of(content.as_bytes())),
                data: Some(Data::Inline),
                ..Entry::dir(&format!("f{i:03}"))
            });
        }
        Header {
            kind: ImageKind::Image,
            image_id: image_id(&entries, None),
            base_id: None,
            config: "{}".into(),
            codecs: vec![],
            dicts: vec![],
            entries,
            origin: None,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("d4c-fuzz-compact")
        .tempdir_in("/dev/shm")
        .unwrap();
    // Most inputs would fail the magic and base id at once; put them in place
    // (the fuzzer still reaches them through the first byte).
    let mut input = Vec::with_capacity(data.len() + 40);
    if data.first() != Some(&0) {
        input.extend_from_slice(b"D4CCMPT1");
        input.extend_from_slice(&base().image_id.0);
    }
    input.extend_from_slice(data);
    let path = dir.path().join("in");
    std::fs::File::create(&path).unwrap().write_all(&input).unwrap();
    let out = dir.path().join("out");
    let want = Digest::of(data);
    if compact::decode(&path, base(), &want, &out).is_ok() {
        let got = std::fs::read(&out).unwrap();
        assert_eq!(Digest::of(&got), want, "accepted bytes that do not hash to the digest");
    } else {
        assert!(!out.exists(), "a refused decode left its output");
    }
});
