//! A cdimg file from hostile bytes: the reader must refuse it with an error or
//! accept a header that passes validation, and everything built on a valid
//! header (image id, the mount's inode table, blobs and dictionaries) must not
//! panic.
#![no_main]

use std::io::Write;

use d4c_host::image::entry::image_id;
use d4c_host::image::format::{Header, Reader};
use d4c_host::mount::tree::Tree;
use libfuzzer_sys::fuzz_target;

fn memfd(data: &[u8]) -> std::fs::File {
    // SAFETY: a valid NUL-terminated name; the descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"cdimg".as_ptr(), 0) };
    assert!(fd >= 0);
    use std::os::fd::FromRawFd;
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).unwrap();
    f
}

fn use_header(h: &Header) {
    let _ = h.compute_id();
    if let Ok(tree) = Tree::new(h) {
        for ino in 1..=tree.len() as u64 {
            let node = tree.get(ino).expect("every inode exists");
            for (name, child) in &node.children {
                assert_eq!(tree.lookup(ino, name), Some(*child));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The whole file, through the reader.
    if let Ok(r) = Reader::from_file(memfd(data), std::path::Path::new("fuzz.cdimg")) {
        use_header(r.header());
        for e in &r.header().entries {
            let _ = r.full_content(e);
        }
        for i in 0..r.header().dicts.len() as u32 {
            let _ = r.dict(i);
        }
    }
    // The header's JSON alone, through validation (most inputs never get past the
    // reader's digest check, so the JSON gets its own go).
    if let Ok(h) = serde_json::from_slice::<Header>(data) {
        if h.validate(u64::MAX / 2).is_ok() {
            use_header(&h);
        }
    }
});
