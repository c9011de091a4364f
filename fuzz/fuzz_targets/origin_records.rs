//! Hostile tar records (docs/FORMAT.md, "Provenance") in an otherwise valid
//! image, through `verify`: an error, never a panic or an allocation sized by
//! what the records claim.
#![no_main]

use std::sync::OnceLock;

use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};
use d4c_host::digest::Digest;
use d4c_host::image::chain::Chain;
use d4c_host::image::entry::{Entry, Kind};
use d4c_host::image::format::{Header, ImageKind, Writer};
use d4c_host::image::origin::{rebuild, records_name, Origin, OriginLayer};
use d4c_host::progress::Silent;
use libfuzzer_sys::fuzz_target;

fn codecs() -> &'static Codecs {
    static C: OnceLock<Codecs> = OnceLock::new();
    C.get_or_init(|| {
        let rt = Runtime::new(Limits::default(), None).expect("runtime");
        Codecs::new(rt, CodecStore::new(std::env::temp_dir().join("d4c-fuzz-codecs")))
    })
}

/// A file entry holding `data`, written by `w`.
fn file(w: &mut Writer, path: &str, data: &[u8]) -> Entry {
    Entry {
        kind: Kind::File,
        size: Some(data.len() as u64),
        digest: Some(Digest::of(data)),
        data: Some(w.content(data, 1).unwrap()),
        ..Entry::dir(path)
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("d4c-fuzz-origin")
        .tempdir_in("/dev/shm")
        .unwrap();
    let path = dir.path().join("o.cdimg");
    let layer = Digest::of(b"the original layer");
    let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, layer.oci());
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":1}}]}}"#,
        Digest::of(config.as_bytes()).oci(),
        config.len(),
        layer.oci()
    );
    let mut w = Writer::create(&path).unwrap();
    let a = file(&mut w, "a", b"hello\n");
    let records = file(&mut w, &records_name(0), data);
    let mut h = Header {
        kind: ImageKind::Image,
        image_id: Digest([0; 32]),
        base_id: None,
        config,
        codecs: vec![],
        dicts: vec![],
        entries: vec![Entry::dir(""), a],
        origin: Some(Origin {
            manifest,
            layers: vec![OriginLayer {
                records: Digest::of(data),
                recipe: None,
            }],
            content: vec![records],
        }),
    };
    h.image_id = h.compute_id();
    if w.finish(&h).is_err() {
        return;
    }
    let chain = Chain::open(&[path]).expect("a valid image");
    let r = rebuild::verify(&chain, codecs(), None, 1, &Silent);
    // No records rebuild this made-up layer.
    assert!(r.is_err());
});
