//! A `docker save` archive from hostile bytes: opening it must fail with an
//! error or give a config and layers, never panic, and whatever it unpacks
//! stays in its own temporary directory as plain files and directories (no
//! symlink is ever created, so no path the manifest names can reach out).
#![no_main]

use d4c_host::image::builder::docker_archive;
use libfuzzer_sys::fuzz_target;

fn no_links_below(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        assert!(!t.is_symlink(), "a symlink was unpacked: {:?}", e.path());
        if t.is_dir() {
            no_links_below(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("d4c-fuzz-archive")
        .tempdir_in("/dev/shm")
        .unwrap();
    let file = dir.path().join("archive.tar");
    std::fs::write(&file, data).unwrap();
    let unpack = dir.path().join("unpack");
    std::fs::create_dir(&unpack).unwrap();
    if let Ok(img) = docker_archive::open(&file, None, &unpack) {
        for (path, _) in &img.layers {
            assert!(path.starts_with(&unpack), "a layer path escapes: {path:?}");
        }
        no_links_below(&unpack);
    }
    // Nothing but the archive and the unpack directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
});
