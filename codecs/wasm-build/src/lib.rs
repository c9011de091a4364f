//! Compiles codec crates of this workspace to `wasm32-wasip2` components from a
//! build script, with a nested cargo (the approach of wasmtime's own
//! test-programs-artifacts crate).
//!
//! The build is reproducible: paths are remapped, debug info is stripped and the
//! `codec` profile uses one codegen unit, so the same source gives the same
//! component bytes, and so the same codec sha256, wherever it is built.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every codec is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The workspace root, from a build script's `CARGO_MANIFEST_DIR` (crates sit one
/// or two levels below it).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    while !dir.join("wit").is_dir() {
        assert!(
            dir.pop(),
            "no workspace root with a wit/ directory above the crate"
        );
    }
    dir
}

/// Where nested builds put their output: `<target>/<name>`, `<target>` being
/// `$CARGO_TARGET_DIR` when the outer build has one, else `<root>/target`.
/// A directory of its own, since the outer cargo holds the lock on its own.
pub fn target_dir(root: &Path, name: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(name)
}

/// Builds `package` (with `features`) into `target_dir` and returns the path of the
/// component. Panics with the missing prerequisites named if the build fails.
pub fn build(root: &Path, target_dir: &Path, package: &str, features: &[&str]) -> PathBuf {
    // The `cargo` on PATH with the toolchain's own default, not the outer one:
    // the components' bytes (their sha256 identities) must not depend on which
    // toolchain builds the host (cargo-fuzz builds it with nightly, for one).
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args([
            "build",
            "--locked",
            "--profile=codec",
            "--target",
            TARGET,
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // What the outer cargo passes to build scripts must not leak into the nested
    // build (host-target flags, jobserver, profile settings, clippy as the compiler).
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "CARGO"
        {
            cmd.env_remove(k);
        }
    }
    let home = env::var("CARGO_HOME")
        .or_else(|_| env::var("HOME").map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    let rustflags = [
        format!("--remap-path-prefix={}=/d4c", root.display()),
        format!("--remap-path-prefix={home}=/cargo"),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    // C (zstd) is compiled by clang against Debian's wasi-libc sysroot.
    let cflags = format!(
        "--target=wasm32-wasi --sysroot=/usr -isystem /usr/include/wasm32-wasi -DNDEBUG \
         -ffile-prefix-map={}=/d4c -ffile-prefix-map={home}=/cargo",
        root.display()
    );
    cmd.env(
        "CC_wasm32_wasip2",
        env::var("CC_wasm32_wasip2").unwrap_or_else(|_| "clang".into()),
    )
    .env(
        "AR_wasm32_wasip2",
        env::var("AR_wasm32_wasip2").unwrap_or_else(|_| "llvm-ar".into()),
    )
    .env("CFLAGS_wasm32_wasip2", cflags);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {package} for {TARGET}: {e}"));
    assert!(
        status.success(),
        "building {package} for {TARGET} failed. Prerequisites: `rustup target add {TARGET}` and \
         `apt-get install clang lld llvm wasi-libc` (README.md lists them)"
    );
    let stem = package.replace('-', "_");
    target_dir
        .join(TARGET)
        .join("codec")
        .join(format!("{stem}.wasm"))
}

/// Tells cargo to rerun the build script when codec sources or the WIT change.
pub fn rerun_if_sources_change(root: &Path) {
    for p in ["codecs", "wit", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
}
