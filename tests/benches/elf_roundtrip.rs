//! elf-refs on every ELF file that changed between two extracted image trees
//! (same path in both, different bytes): diff, patch back, compare, natively
//! (the same crate as the component; `codec_roundtrip` asserts both give the
//! same bytes), on all cores. Prints one markdown row: files, bytes, failures,
//! elf-refs delta bytes and how many files kept the rewritten form.
//!
//! Usage (scripts/bench-elf runs this on a series):
//!   cargo bench -p d4c-tests --bench elf_roundtrip -- LABEL OLD_ROOT NEW_ROOT

use std::path::{Path, PathBuf};

use d4c_codec_elf_refs::ElfRefs;
use d4c_codec_guest::Codec as _;
use rayon::prelude::*;

fn elf_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let mut head = [0u8; 4];
                let ok = std::fs::File::open(e.path())
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
                if ok.is_ok() && &head == b"\x7fELF" {
                    out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [label, old_root, new_root] = &args[..] else {
        panic!("usage: elf_roundtrip LABEL OLD_ROOT NEW_ROOT");
    };
    let (old_root, new_root) = (Path::new(old_root), Path::new(new_root));
    let results: Vec<(u64, u64, bool, bool)> = elf_files(new_root)
        .par_iter()
        .with_max_len(1)
        .filter_map(|rel| {
            let old = std::fs::read(old_root.join(rel)).ok()?;
            let new = std::fs::read(new_root.join(rel)).unwrap();
            if old == new || old.len().max(new.len()) as u64 > ElfRefs::MAX_INPUT {
                return None;
            }
            let delta = ElfRefs::diff(&old, &new, 0).unwrap();
            let ok = ElfRefs::patch(&old, &delta).is_ok_and(|back| back == new);
            if !ok {
                eprintln!("elf-refs does not round-trip {}", rel.display());
            }
            // The rewritten form names a machine in the old file's layout.
            let rewritten = delta.get(8) != Some(&0);
            Some((new.len() as u64, delta.len() as u64, ok, rewritten))
        })
        .collect();
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let delta: u64 = results.iter().map(|r| r.1).sum();
    let failed = results.iter().filter(|r| !r.2).count();
    let rewritten = results.iter().filter(|r| r.3).count();
    println!(
        "| {label} | {} | {:.1} | {failed} | {:.1} | {rewritten} |",
        results.len(),
        bytes as f64 / 1e6,
        delta as f64 / 1e3
    );
    assert_eq!(failed, 0, "{failed} files did not round-trip");
}
