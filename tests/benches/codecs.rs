//! Codec benchmark: each built-in codec as a sandboxed wasm component against the
//! same crate compiled natively, and against the classic CLIs, on real file pairs.
//!
//! Usage (scripts/bench-codecs fetches real pairs and runs this):
//!   cargo bench -p d4c-tests --bench codecs -- LABEL=OLD:NEW ...
//! Prints a markdown table. Times are wall-clock seconds, best of `D4C_BENCH_RUNS`
//! (default 1) runs, on whatever else the machine is doing. `D4C_BENCH_CODECS`
//! picks the codecs (default `bsdiff,elf-refs,zstd-dict`); `D4C_BENCH_NO_CLI`
//! skips the classic CLIs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use d4c_codec_guest::Codec as _;
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};
use d4c_host::digest::Digest;

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, f64) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(v);
    }
    (out.unwrap(), best)
}

fn cli(cmd: &mut Command, out: &Path) -> (u64, f64) {
    let t = Instant::now();
    let st = cmd.output().expect("running CLI");
    assert!(
        st.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    (
        std::fs::metadata(out).unwrap().len(),
        t.elapsed().as_secs_f64(),
    )
}

/// A built-in codec's crate compiled natively: its diff and patch.
type NativeDiff = fn(&[u8], &[u8], u8) -> d4c_codec_guest::Result<Vec<u8>>;
type NativePatch = fn(&[u8], &[u8]) -> d4c_codec_guest::Result<Vec<u8>>;

fn native(name: &str) -> (NativeDiff, NativePatch) {
    use d4c_codec_bsdiff::Bsdiff;
    use d4c_codec_elf_refs::ElfRefs;
    use d4c_codec_zstd_dict::ZstdDict;
    match name {
        "bsdiff" => (Bsdiff::diff, Bsdiff::patch),
        "elf-refs" => (ElfRefs::diff, ElfRefs::patch),
        "zstd-dict" => (ZstdDict::diff, ZstdDict::patch),
        _ => panic!("D4C_BENCH_CODECS: no native build of {name} here"),
    }
}

/// One row of the first table: `name` natively and as the component.
fn codec_row(codecs: &Codecs, runs: usize, name: &str, label: &str, old: &[u8], new: &[u8]) {
    let wasm = codecs.builtin(name).unwrap();
    let (diff, patch) = native(name);
    let (native_d, nd) = best(runs, || diff(old, new, 0).unwrap());
    let (wasm_d, wd) = best(runs, || wasm.diff(old, new, 0).unwrap());
    assert_eq!(native_d, wasm_d, "{name}: wasm and native deltas differ");
    let (_, np) = best(runs, || patch(old, &native_d).unwrap());
    let (_, wp) = best(runs, || {
        wasm.patch_checked(old, &wasm_d, &Digest::of(new)).unwrap()
    });
    let mb = new.len() as f64 / 1e6;
    println!(
        "| {label} | {mb:.1} | {name} | {:.1} | {nd:.2} | {wd:.2} | {:.2} | {np:.3} | {wp:.3} |",
        wasm_d.len() as f64 / 1e3,
        wd / nd
    );
}

/// One row of the second table: the bsdiff 4.3 and zstd CLIs on the pair.
fn cli_row(tmp: &Path, label: &str, old_p: &str, new_p: &str, mb: f64) -> String {
    let out = tmp.join("cli.out");
    let (bs, bt) = cli(Command::new("bsdiff").args([old_p, new_p]).arg(&out), &out);
    let (zs, zt) = cli(
        Command::new("zstd")
            .args([
                "-q",
                "-f",
                "-19",
                &format!("--patch-from={old_p}"),
                new_p,
                "-o",
            ])
            .arg(&out),
        &out,
    );
    format!(
        "| {label} | {mb:.1} | {:.1} | {bt:.2} | {:.1} | {zt:.2} |",
        bs as f64 / 1e3,
        zs as f64 / 1e3
    )
}

fn main() {
    let runs: usize = std::env::var("D4C_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let names =
        std::env::var("D4C_BENCH_CODECS").unwrap_or_else(|_| "bsdiff,elf-refs,zstd-dict".into());
    let pairs: Vec<(String, String, String)> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| {
            let (label, rest) = a.split_once('=').expect("LABEL=OLD:NEW");
            let (o, n) = rest.split_once(':').expect("LABEL=OLD:NEW");
            (label.to_string(), o.to_string(), n.to_string())
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        memory: 3 << 30,
        time: Duration::from_secs(3600),
    };
    let codecs = Codecs::new(
        Runtime::new(limits, None).unwrap(),
        CodecStore::new(tmp.path()),
    );

    println!("| pair | new MB | codec | delta KB | native diff s | wasm diff s | wasm/native | native patch s | wasm patch s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cli_rows = Vec::new();
    for (label, old_p, new_p) in &pairs {
        let old = std::fs::read(old_p).unwrap();
        let new = std::fs::read(new_p).unwrap();
        for name in names.split(',') {
            codec_row(&codecs, runs, name, label, &old, &new);
        }
        if std::env::var_os("D4C_BENCH_NO_CLI").is_none() {
            let mb = new.len() as f64 / 1e6;
            cli_rows.push(cli_row(tmp.path(), label, old_p, new_p, mb));
        }
    }
    if cli_rows.is_empty() {
        return;
    }
    println!();
    println!("| pair | new MB | bsdiff 4.3 CLI KB | s | zstd -19 --patch-from CLI KB | s |");
    println!("|---|---|---|---|---|---|");
    for r in cli_rows {
        println!("{r}");
    }
}
