//! What one codec call costs beyond its work: a fresh instance per call (the
//! sandbox's rule), inputs copied in, output copied out. Patches a small delta
//! of each built-in many times and prints the mean per call.
//!
//!   cargo bench -p d4c-tests --bench codec_calls [-- CALLS]

use std::time::{Duration, Instant};

use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};

fn main() {
    let calls: u32 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let tmp = tempfile::tempdir().unwrap();
    let codecs = Codecs::new(
        Runtime::new(Limits::default(), None).unwrap(),
        CodecStore::new(tmp.path()),
    );
    println!("| codec | file | calls | mean patch ms |");
    println!("|---|---|---|---|");
    for (size, name) in [16 << 10, 4 << 20]
        .into_iter()
        .flat_map(|s| ["bsdiff", "elf-refs", "zstd-dict"].map(|n| (s, n)))
    {
        let old: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut new = old.clone();
        new[100..110].copy_from_slice(b"0123456789");
        let calls = if size > 1 << 20 { calls / 10 } else { calls };
        let c = codecs.builtin(name).unwrap();
        let delta = c.diff(&old, &new, 3).unwrap();
        c.patch(&old, &delta).unwrap(); // compile outside the timing
        let t = Instant::now();
        for _ in 0..calls {
            assert_eq!(c.patch(&old, &delta).unwrap(), new);
        }
        let mean: Duration = t.elapsed() / calls;
        let kib = size >> 10;
        println!(
            "| {name} | {kib} KiB | {calls} | {:.3} |",
            mean.as_secs_f64() * 1e3
        );
    }
}
