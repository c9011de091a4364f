//! Bytes a pull moves for a delta: the delta file, and its compact form (the
//! header sent against the client's own base tree, docs/FORMAT.md), which is
//! what a registry serves when the base was pushed first.
//!
//! Usage (scripts/bench-bytes runs this):
//!   cargo bench -p d4c-tests --bench compact_size -- BASE.cdimg DELTA.cdimg
//! Prints `DELTA_BYTES COMPACT_BYTES`.

use d4c_host::image::format::Reader;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [base, delta] = &args[..] else {
        panic!("usage: compact_size BASE.cdimg DELTA.cdimg");
    };
    let base = Reader::open(base.as_ref()).unwrap();
    let delta_reader = Reader::open(delta.as_ref()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("compact");
    let compact = d4c_host::update::compact::encode(&delta_reader, base.header(), &out).unwrap();
    let size = std::fs::metadata(delta).unwrap().len();
    println!("{size} {compact}");
}
