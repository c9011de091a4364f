//! An OCI image layout from hostile JSON: the input is index.json, a manifest and
//! a config separated by 0xFF bytes; the strings "@MANIFEST@" and "@CONFIG@" in
//! them are replaced by the digests of the parts that follow, so the fuzzer
//! reaches past the digest links. Opening the layout must fail with an error or
//! give a config and layer list, never panic.
#![no_main]

use d4c_host::digest::Digest;
use d4c_host::image::builder::oci;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts: Vec<Vec<u8>> = data.split(|&b| b == 0xFF).map(<[u8]>::to_vec).collect();
    parts.resize(3, Vec::new());
    let replace = |hay: &[u8], pat: &str, with: &str| -> Vec<u8> {
        let s = String::from_utf8_lossy(hay);
        s.replace(pat, with).into_bytes()
    };
    let config = parts[2].clone();
    let cd = format!("{:?}", Digest::of(&config));
    let manifest = replace(&parts[1], "@CONFIG@", &cd);
    let md = format!("{:?}", Digest::of(&manifest));
    let index = replace(&parts[0], "@MANIFEST@", &md);

    let dir = tempfile::Builder::new()
        .prefix("d4c-fuzz-oci")
        .tempdir_in("/dev/shm")
        .unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.path().join("index.json"), &index).unwrap();
    for blob in [&manifest, &config] {
        std::fs::write(blobs.join(Digest::of(blob).hex()), blob).unwrap();
    }
    for tag in [None, Some("v1")] {
        if let Ok(img) = oci::open(dir.path(), tag, &d4c_host::image::builder::Platform::host()) {
            assert_eq!(img.config, config, "the config is the one the manifest names");
            for (path, _) in &img.layers {
                assert!(path.starts_with(dir.path()), "a layer path escapes the layout");
            }
        }
    }
});
