//! Helpers for d4c's end-to-end tests: test components, real data from Debian
//! packages, the `d4c` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};

pub mod cri;
pub mod raw;
pub mod series;
pub mod services;

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

/// Starts `d4c serve` as `cmd` (its stdout is taken here) and returns it with
/// the URL its first line says it listens on.
pub fn start_serve(cmd: &mut Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting d4c serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("reading d4c serve's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("d4c serve said {line:?}"))
        .to_string();
    (child, url)
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

/// `file` (a path inside the package) from `pkg` at `version`.
pub fn debian_file(pkg: &str, version: &str, file: &str) -> Result<Vec<u8>> {
    let target = debian_root(pkg, version)?.join(file.trim_start_matches('/'));
    std::fs::read(&target).with_context(|| format!("{file} not in {pkg} {version}"))
}

/// The same file from the `n` newest versions of a Debian package, oldest first.
/// Panics (failing the test) if fewer than `n` versions are available.
pub fn debian_series(pkg: &str, file: &str, n: usize) -> Vec<Vec<u8>> {
    newest(pkg, file, n, |v| debian_root(pkg, v))
}

/// As [`debian_series`], from the package built for another architecture
/// (`arch`, e.g. `arm64`). apt knows only this machine's architecture, so each
/// package is fetched (curl) from the URI apt gives for the amd64 build with
/// the architecture swapped, then extracted once and cached.
pub fn debian_foreign_series(pkg: &str, arch: &str, file: &str, n: usize) -> Vec<Vec<u8>> {
    newest(pkg, file, n, |v| debian_foreign_root(pkg, arch, v))
}

fn newest(pkg: &str, file: &str, n: usize, root: impl Fn(&str) -> Result<PathBuf>) -> Vec<Vec<u8>> {
    let versions = debian_versions(pkg).expect("apt-cache madison");
    assert!(
        versions.len() >= n,
        "{pkg}: want {n} versions, apt offers {versions:?} (run apt-get update)"
    );
    let mut out: Vec<Vec<u8>> = versions[..n]
        .iter()
        .map(|v| {
            let target = root(v)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .join(file.trim_start_matches('/'));
            std::fs::read(&target)
                .unwrap_or_else(|e| panic!("{file} not in {pkg} {v} ({}): {e}", target.display()))
        })
        .collect();
    out.reverse();
    out
}

fn debian_foreign_root(pkg: &str, arch: &str, version: &str) -> Result<PathBuf> {
    let dir = data_dir().join(format!("{pkg}_{arch}_{version}").replace([':', '~'], "_"));
    let root = dir.join("root");
    if root.is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&dir)?;
    let uris = sh(Command::new("apt-get")
        .args(["download", "--print-uris", &format!("{pkg}={version}")])
        .current_dir(&dir))?;
    let uri = uris
        .split_whitespace()
        .next()
        .map(|u| u.trim_matches('\''))
        .filter(|u| u.ends_with("_amd64.deb"))
        .with_context(|| format!("no amd64 URI for {pkg} {version} in {uris:?}"))?;
    let uri = format!("{}_{arch}.deb", uri.trim_end_matches("_amd64.deb"));
    let deb = dir.join("package.deb");
    sh(Command::new("curl")
        .args(["-sSfL", "--retry", "3", "-o"])
        .arg(&deb)
        .arg(&uri))?;
    unpack(&deb, &root)
}

/// Runs a command, failing with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The root directory of `pkg` at `version`, downloaded with `apt-get download`
/// and extracted with `dpkg-deb -x` once, then cached.
pub fn debian_root(pkg: &str, version: &str) -> Result<PathBuf> {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _g = LOCK
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = data_dir().join(format!("{pkg}_{version}").replace([':', '~'], "_"));
    let root = dir.join("root");
    if root.is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("apt-get")
        .args(["download", &format!("{pkg}={version}")])
        .current_dir(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("no .deb downloaded")?;
    unpack(&deb, &root)
}

/// Extracts `deb` to `root` (through a temporary name, so a half-extracted
/// tree is never taken for a cached one).
fn unpack(deb: &Path, root: &Path) -> Result<PathBuf> {
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    std::fs::rename(&tmp, root)?;
    Ok(root.to_path_buf())
}

/// A small real image series as an OCI layout built with umoci: a busybox-static
/// base layer, then for each of the three newest libssl3 releases a layer with
/// that release, a copy of its libcrypto in a versioned directory
/// (`/opt/app-<version>/`, removed again by the next version: whiteouts) and
/// `/etc/app-version`. Tags `v1`, `v2`, `v3`. Built once per test run directory.
pub fn ssl_series(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    if layout.join("index.json").is_file() {
        return layout;
    }
    let versions = debian_versions("libssl3").expect("apt-cache");
    assert!(
        versions.len() >= 3,
        "want 3 libssl3 versions, have {versions:?}"
    );
    let mut versions: Vec<String> = versions[..3].to_vec();
    versions.reverse();
    let bb = debian_versions("busybox-static").expect("apt-cache");
    let busybox = debian_root("busybox-static", &bb[0]).expect("busybox-static");
    let umoci =
        |args: &[&str]| sh(Command::new("umoci").args(args)).unwrap_or_else(|e| panic!("{e:#}"));
    let l = layout.to_string_lossy().into_owned();
    let bundle = dir.join("bundle");
    let b = bundle.to_string_lossy().into_owned();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:base")]);
    let mut prev = "base".to_string();
    for (i, v) in [None]
        .into_iter()
        .chain(versions.iter().map(Some))
        .enumerate()
    {
        umoci(&["unpack", "--image", &format!("{l}:{prev}"), &b]);
        let rootfs = bundle.join("rootfs");
        match v {
            None => {
                sh(Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", busybox.display()))
                    .arg(&rootfs))
                .unwrap();
                std::fs::create_dir_all(rootfs.join("etc")).unwrap();
                std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
                    .unwrap();
            }
            Some(v) => {
                let ssl = debian_root("libssl3", v).unwrap();
                sh(Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", ssl.display()))
                    .arg(&rootfs))
                .unwrap();
                if let Ok(old) = std::fs::read_dir(rootfs.join("opt")) {
                    for d in old {
                        std::fs::remove_dir_all(d.unwrap().path()).unwrap();
                    }
                }
                let app = rootfs.join(format!("opt/app-{v}"));
                std::fs::create_dir_all(&app).unwrap();
                std::fs::copy(
                    ssl.join("usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
                    app.join("libcrypto.so.3"),
                )
                .unwrap();
                std::fs::write(rootfs.join("etc/app-version"), format!("{v}\n")).unwrap();
            }
        }
        let tag = if i == 0 {
            "base".to_string()
        } else {
            format!("v{i}")
        };
        umoci(&["repack", "--image", &format!("{l}:{tag}"), &b]);
        std::fs::remove_dir_all(&bundle).unwrap();
        prev = tag;
    }
    layout
}

/// A path's extended attributes, as ` name=hex` in name order.
fn xattrs(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out: Vec<String> = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let key = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(c.as_ptr(), key.as_ptr(), val.as_mut_ptr().cast(), val.len())
        };
        assert!(len >= 0, "getxattr {}", p.display());
        out.push(format!(
            " {}={}",
            String::from_utf8_lossy(name),
            hex::encode(&val[..len as usize])
        ));
    }
    out.sort();
    out.concat()
}

/// One line per path below `root`: type, mode, owner, size, mtime, link target,
/// content sha256 and xattrs; what two extracted trees must agree on.
pub fn tree_listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let extra = if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            d4c_host::digest::Digest::of(&std::fs::read(&p).unwrap()).hex()
        } else if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            String::new()
        } else {
            format!("rdev {}", m.rdev())
        };
        let mtime = if ft.is_dir() { 0 } else { m.mtime() };
        out.push(format!(
            "{rel:?} {:o} {}:{} size={} mtime={mtime} nlink={} {extra}{}",
            m.mode(),
            m.uid(),
            m.gid(),
            if ft.is_file() { m.size() } else { 0 },
            if ft.is_dir() { 0 } else { m.nlink() },
            xattrs(&p),
        ));
    }
    out.sort();
    out
}

/// Writes an OCI layout with one image `tag`: `layers` are uncompressed tar
/// streams, gzip'd here.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Result<()> {
    use std::io::Write;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut descs = Vec::new();
    for l in layers {
        let diff_id = d4c_host::digest::Digest::of(l);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(l)?;
        let gz = gz.finish()?;
        let d = d4c_host::digest::Digest::of(&gz);
        std::fs::write(blobs.join(d.hex()), &gz)?;
        descs.push(LayerDesc {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            digest: d,
            size: gz.len() as u64,
            diff_id,
        });
    }
    finish_layout(dir, tag, &descs)
}

/// How [`write_layout_as`] stores a layer.
#[derive(Debug, Clone, Copy)]
pub enum LayerFormat {
    /// `gzip -n -LEVEL`, GNU gzip (as Debian's tools and the public series).
    GnuGzip(u8),
    /// Python's `gzip` module (zlib) at a level.
    PythonGzip(u8),
    /// Go's `compress/gzip` at a level, as docker, buildkit and containerd
    /// write layers (`codecs/gzip/go/gogzip.go`, built with Debian's Go).
    GoGzip(u8),
    /// gzip from zlib with a 1 KiB window: a stream no built-in codec
    /// reproduces (every writer d4c knows uses 32 KiB).
    SmallWindowGzip,
    /// An uncompressed tar layer.
    Tar,
}

/// Writes an OCI layout with one image `tag` whose layers are the tar streams
/// `layers`, each stored as its format says.
pub fn write_layout_as(dir: &Path, tag: &str, layers: &[(Vec<u8>, LayerFormat)]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut descs = Vec::new();
    for (l, format) in layers {
        let (blob, media_type) = match format {
            LayerFormat::GnuGzip(level) => (
                pipe(Command::new("gzip").arg("-n").arg(format!("-{level}")), l)?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            LayerFormat::PythonGzip(level) => (
                pipe(
                    Command::new("python3").args([
                        "-c",
                        &format!(
                            "import gzip,sys; sys.stdout.buffer.write(gzip.compress(sys.stdin.buffer.read(), {level}, mtime=0))"
                        ),
                    ]),
                    l,
                )?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            LayerFormat::GoGzip(level) => (
                pipe(Command::new(go_gzip()?).arg(level.to_string()), l)?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            LayerFormat::SmallWindowGzip => (
                pipe(
                    Command::new("python3").args([
                        "-c",
                        "import zlib,sys; c=zlib.compressobj(6, zlib.DEFLATED, 16 + 10); \
                         sys.stdout.buffer.write(c.compress(sys.stdin.buffer.read()) + c.flush())",
                    ]),
                    l,
                )?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            LayerFormat::Tar => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        let d = d4c_host::digest::Digest::of(&blob);
        std::fs::write(blobs.join(d.hex()), &blob)?;
        descs.push(LayerDesc {
            media_type,
            digest: d,
            size: blob.len() as u64,
            diff_id: d4c_host::digest::Digest::of(l),
        });
    }
    finish_layout(dir, tag, &descs)
}

/// The `gogzip` helper (Go's compress/gzip as a filter), built with the
/// system's Go once per version of its source (named by its digest; built
/// beside and renamed, so test processes may race).
fn go_gzip() -> Result<PathBuf> {
    static BIN: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = data_dir().join("go");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let src = workspace_root().join("codecs/gzip/go/gogzip.go");
        let code = std::fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let bin = dir.join(format!(
            "gogzip-{}",
            d4c_host::digest::Digest::of(&code).short()
        ));
        if bin.exists() {
            return Ok(bin);
        }
        let building = bin.with_extension(std::process::id().to_string());
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&building)
            .arg(&src)
            .env("GOCACHE", dir.join("cache"))
            .env("GO111MODULE", "off")
            .output()
            .map_err(|e| format!("running go (golang-go, scripts/setup): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "go build {}: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&building, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        Ok(bin)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Runs `cmd` with `input` on stdin; returns its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    feeder.join().expect("feeder")?;
    anyhow::ensure!(out.status.success(), "{cmd:?} failed");
    Ok(out.stdout)
}

/// Like [`write_layout`] for layers that are uncompressed tar files (moved into
/// the layout as they are, holes and all): for layers too big to hold in memory.
pub fn write_layout_files(dir: &Path, tag: &str, layers: &[PathBuf]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut descs = Vec::new();
    for l in layers {
        let mut h = d4c_host::digest::Hasher::default();
        let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(l)?);
        let mut size = 0u64;
        loop {
            use std::io::BufRead;
            let buf = f.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            h.update(buf);
            let n = buf.len();
            size += n as u64;
            f.consume(n);
        }
        let d = h.finish();
        std::fs::rename(l, blobs.join(d.hex()))?;
        descs.push(LayerDesc {
            media_type: "application/vnd.oci.image.layer.v1.tar",
            digest: d,
            size,
            diff_id: d,
        });
    }
    finish_layout(dir, tag, &descs)
}

struct LayerDesc {
    media_type: &'static str,
    digest: d4c_host::digest::Digest,
    size: u64,
    diff_id: d4c_host::digest::Digest,
}

/// Config, manifest and index for layers already in `dir/blobs`.
fn finish_layout(dir: &Path, tag: &str, layers: &[LayerDesc]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let d = d4c_host::digest::Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data)?;
        Ok((d.oci(), data.len()))
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest.oci(), "size": l.size}))
        .collect();
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.oci()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cn) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    });
    let (md, mn) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// One PAX extended header record (`LEN KEY=VALUE\n`).
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The manifest digest (`sha256:…`) tagged `tag` in the OCI layout `dir`.
pub fn tagged_manifest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {}", dir.display()))["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// Pushes a pod sandbox ("pause") image to `reference` (a registry tag): one
/// busybox-static layer built with umoci, running `sleep infinity`. Built once
/// per data directory; pushing it again is cheap.
pub fn push_pause_image(reference: &str) -> Result<()> {
    let dir = data_dir().join("pause");
    let layout = dir.join("oci");
    if !layout.join("index.json").is_file() {
        let bb = debian_versions("busybox-static")?;
        let busybox = debian_root("busybox-static", bb.first().context("no busybox-static")?)?;
        let tmp = dir.join("oci.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let bundle = dir.join("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        let l = format!("{}:pause", tmp.display());
        let umoci = |args: &[&str]| sh(Command::new("umoci").args(args));
        umoci(&["init", "--layout", &tmp.to_string_lossy()])?;
        umoci(&["new", "--image", &l])?;
        umoci(&["unpack", "--image", &l, &bundle.to_string_lossy()])?;
        sh(Command::new("cp")
            .arg("-a")
            .arg(busybox.join("bin/busybox"))
            .arg(bundle.join("rootfs")))?;
        umoci(&["repack", "--image", &l, &bundle.to_string_lossy()])?;
        umoci(&[
            "config",
            "--image",
            &l,
            "--config.entrypoint",
            "/busybox",
            "--config.cmd",
            "sleep",
            "--config.cmd",
            "infinity",
        ])?;
        std::fs::remove_dir_all(&bundle)?;
        std::fs::rename(&tmp, &layout)?;
    }
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:pause", layout.display()),
        &format!("docker://{reference}"),
    ]))?;
    Ok(())
}

/// Starts `d4c-snapshotter` (beside the `d4c` binary `d4c`) on `socket` with
/// state in `root`, its stderr appended to `log`, and waits until `containerd`
/// (whose proxy plugin "d4c" is that socket) reaches it: after a restart,
/// containerd's connection recovers from its backoff within seconds, and
/// only preparing a snapshot (not listing) goes through to the plugin.
pub fn start_snapshotter(
    d4c: &Path,
    root: &Path,
    socket: &Path,
    log: &Path,
    containerd: &Path,
    extra: &[String],
) -> std::process::Child {
    let bin = d4c.parent().unwrap().join("d4c-snapshotter");
    assert!(
        bin.exists(),
        "{} is not built: cargo build --release -p d4c-snapshotter (scripts/test does)",
        bin.display()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .arg("--address")
        .arg(socket)
        .args(extra)
        .stderr(log)
        .spawn()
        .unwrap();
    let ctr = |args: &[&str]| {
        sh(Command::new("ctr")
            .arg("--address")
            .arg(containerd)
            .args([
                "--namespace",
                "d4c-probe",
                "snapshots",
                "--snapshotter",
                "d4c",
            ])
            .args(args))
    };
    let t = std::time::Instant::now();
    for i in 0.. {
        let probe = format!("ready-probe-{}-{i}", std::process::id());
        if ctr(&["prepare", &probe]).is_ok() {
            ctr(&["rm", &probe]).unwrap();
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the snapshotter did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child
}

/// A TCP port on loopback nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metric `name` from `http://127.0.0.1:port/metrics`, summed over its
/// label sets whose text contains `labels` (Prometheus' text format).
pub fn scrape_metric(port: u16, name: &str, labels: &str) -> u64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
