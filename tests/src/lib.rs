//! Helpers for d4c's end-to-end tests: test components, real data from Debian
//! packages, the `d4c` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};

/// Components built by tests/build.rs: one hostile codec per behaviour, and the
/// template codec.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/test_components.rs"));
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A runtime with the given caps and no compile cache.
pub fn runtime(memory: u64, time: Duration) -> Runtime {
    Runtime::new(Limits { memory, time }, None).expect("runtime")
}

/// A resolver over the built-ins and a store in `dir`, with default caps and a
/// compile cache shared by the test run (so each test does not recompile).
pub fn codecs_in(dir: &Path) -> Codecs {
    let cache = workspace_root().join("target").join("test-compiled");
    let rt = Runtime::new(Limits::default(), Some(cache)).expect("runtime");
    Codecs::new(rt, CodecStore::new(dir.join("codecs")))
}

/// Runs the `d4c` binary `bin` (a test in the cli package passes
/// `env!("CARGO_BIN_EXE_d4c")`) with `args` and a private `D4C_HOME`; returns
/// (status ok, stdout, stderr).
pub fn run_d4c(bin: &Path, home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .env("D4C_HOME", home)
        .env_remove("D4C_CODEC_DIR")
        .output()
        .expect("running d4c");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where downloaded test data is kept between runs.
pub fn data_dir() -> PathBuf {
    let d = workspace_root().join("target").join("test-data");
    std::fs::create_dir_all(&d).expect("test data dir");
    d
}

/// The versions of a Debian package the configured archives offer, newest first.
pub fn debian_versions(pkg: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["madison", pkg])
        .output()
        .context("running apt-cache")?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|s| s.trim().to_string()))
        .collect();
    v.dedup();
    Ok(v)
}

/// `file` (a path inside the package) from `pkg` at `version`, downloaded with
/// `apt-get download` once and cached.
pub fn debian_file(pkg: &str, version: &str, file: &str) -> Result<Vec<u8>> {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _g = LOCK
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = data_dir().join(format!("{pkg}_{version}").replace([':', '~'], "_"));
    let target = dir.join("root").join(file.trim_start_matches('/'));
    if !target.is_file() {
        std::fs::create_dir_all(&dir)?;
        let st = Command::new("apt-get")
            .args(["download", &format!("{pkg}={version}")])
            .current_dir(&dir)
            .output()
            .context("running apt-get download")?;
        if !st.status.success() {
            bail!(
                "apt-get download {pkg}={version}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("no .deb downloaded")?;
        let st = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root"))
            .status()?;
        if !st.success() {
            bail!("dpkg-deb -x {} failed", deb.display());
        }
    }
    std::fs::read(&target).with_context(|| format!("{file} not in {pkg} {version}"))
}

/// The same file from the `n` newest versions of a Debian package, oldest first.
/// Panics (failing the test) if fewer than `n` versions are available.
pub fn debian_series(pkg: &str, file: &str, n: usize) -> Vec<Vec<u8>> {
    let versions = debian_versions(pkg).expect("apt-cache madison");
    assert!(
        versions.len() >= n,
        "{pkg}: want {n} versions, apt offers {versions:?} (run apt-get update)"
    );
    let mut out: Vec<Vec<u8>> = versions[..n]
        .iter()
        .map(|v| debian_file(pkg, v, file).unwrap_or_else(|e| panic!("{e:#}")))
        .collect();
    out.reverse();
    out
}
