//! The image pipeline as a user runs it, on a small real series (busybox and three
//! libssl3 releases from Debian, layered by umoci) and on crafted edge cases:
//! convert, diff, patch, merge, extract, inspect, and their errors.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use d4c_host::image::entry::Data;
use d4c_host::image::format::Reader;
use d4c_tests::pax_record;
use d4c_tests::series::Series;
use d4c_tests::{sh, tree_listing};

/// The series, converted and diffed once for all tests of this binary.
fn series() -> &'static Series {
    static S: OnceLock<Series> = OnceLock::new();
    S.get_or_init(|| Series::build(Path::new(env!("CARGO_BIN_EXE_d4c")), "image-tests"))
}

#[test]
fn patch_gives_the_image_id_of_a_fresh_convert() {
    let s = series();
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("d12.cdimg"),
        "-o",
        &s.p("p2.cdimg"),
    ]);
    s.same_image("p2.cdimg", "v2.cdimg");
    assert_eq!(s.inspect("p2.cdimg")["base_id"], serde_json::Value::Null);
    // Two deltas in one go.
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("d12.cdimg"),
        &s.p("d23.cdimg"),
        "-o",
        &s.p("p3.cdimg"),
    ]);
    s.same_image("p3.cdimg", "v3.cdimg");
}

#[test]
fn extract_equals_umoci_unpack() {
    let s = series();
    for (tag, chain) in [
        ("v1", vec!["v1.cdimg"]),
        ("v2", vec!["v1.cdimg", "d12.cdimg"]),
        ("v3", vec!["v1.cdimg", "d12.cdimg", "d23.cdimg"]),
    ] {
        let out = s.p(&format!("x-{tag}-{}", chain.len()));
        let mut args = vec!["extract".to_string()];
        args.extend(chain.iter().map(|c| s.p(c)));
        args.extend(["-o".to_string(), out.clone()]);
        s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            tree_listing(Path::new(&out)),
            tree_listing(&s.umoci_rootfs(tag)),
            "{tag}"
        );
        let version =
            sh(Command::new("chroot")
                .arg(&out)
                .args(["/bin/busybox", "cat", "/etc/app-version"]))
            .unwrap();
        assert!(version.starts_with("3.0."), "{version}");
    }
}

#[test]
fn export_writes_a_layout_oci_tools_read_with_stable_digests() {
    let s = series();
    let layout = s.p("exported");
    let target = |tag: &str| format!("{layout}:{tag}");
    let manifest = |out: &str| out.split("manifest ").nth(1).unwrap()[..71].to_string();
    // Squashed (one layer: what an image without an origin is exported as):
    // v3 from a chain, then from its full image: the same content, the same digests.
    let a = s.ok(&[
        "export",
        &s.p("v1.cdimg"),
        &s.p("d12.cdimg"),
        &s.p("d23.cdimg"),
        "--squash",
        "-o",
        &target("v3"),
    ]);
    let b = s.ok(&[
        "export",
        &s.p("v3.cdimg"),
        "--squash",
        "-o",
        &target("v3-again"),
    ]);
    assert_eq!(manifest(&a), manifest(&b));
    s.ok(&["export", &s.p("v2.cdimg"), "--squash", "-o", &target("v2")]);
    // Re-exporting a tag replaces it; the other tags stay.
    s.ok(&["export", &s.p("v1.cdimg"), "-o", &target("v2")]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&layout).join("index.json")).unwrap())
            .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);

    let inspect =
        sh(Command::new("skopeo").args(["inspect", &format!("oci:{}", target("v3"))])).unwrap();
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"].as_str().unwrap(), manifest(&a));
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    // skopeo copies it (checking every blob's digest) ...
    let copy = s.p("exported-copy");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}", target("v3")),
        &format!("oci:{copy}:v3"),
    ]))
    .unwrap();
    // ... umoci unpacks the same tree as the original image's ...
    let bundle = s.p("umoci-exported-v3");
    sh(Command::new("umoci").args(["unpack", "--image", &target("v3"), &bundle])).unwrap();
    assert_eq!(
        tree_listing(&Path::new(&bundle).join("rootfs")),
        tree_listing(&s.umoci_rootfs("v3"))
    );
    // ... and converting it back gives the same tree.
    s.ok(&["convert", &target("v3"), "-o", &s.p("re-v3.cdimg")]);
    s.same_tree("re-v3.cdimg", "v3.cdimg");

    // A directory that is not a layout is left alone.
    let junk = s.p("not-a-layout");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(Path::new(&junk).join("precious"), b"keep").unwrap();
    let err = s.fails(&["export", &s.p("v3.cdimg"), "-o", &junk]);
    assert!(err.contains("not an OCI image layout"), "{err}");
    assert_eq!(std::fs::read_dir(&junk).unwrap().count(), 1);
}

#[test]
fn merged_delta_patches_v1_to_v3() {
    let s = series();
    s.merge("d12.cdimg", "d23.cdimg", "d13.cdimg");
    let d13 = s.inspect("d13.cdimg");
    assert_eq!(d13["base_id"], s.inspect("v1.cdimg")["image_id"]);
    assert_eq!(d13["image_id"], s.inspect("v3.cdimg")["image_id"]);
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("d13.cdimg"),
        "-o",
        &s.p("m3.cdimg"),
    ]);
    s.same_image("m3.cdimg", "v3.cdimg");
    let out = s.p("x-merged");
    s.ok(&["extract", &s.p("v1.cdimg"), &s.p("d13.cdimg"), "-o", &out]);
    assert_eq!(
        tree_listing(Path::new(&out)),
        tree_listing(&s.umoci_rootfs("v3"))
    );
}

#[test]
fn diff_encodes_changed_and_renamed_files_as_deltas() {
    let s = series();
    let d = s.inspect("d12.cdimg");
    assert_eq!(d["base_id"], s.inspect("v1.cdimg")["image_id"]);
    assert!(d["files"]["delta"].as_u64().unwrap() >= 2, "{d}");
    assert!(
        d["files"]["same"].as_u64().unwrap() >= 10,
        "busybox and unchanged files: {d}"
    );
    let codecs = d["codecs"].as_array().unwrap();
    assert!(codecs
        .iter()
        .all(|c| c["sha256"].as_str().unwrap().len() == "sha256:".len() + 64));
    // The delta is a fraction of the new image.
    let (db, vb) = (
        d["bytes"].as_u64().unwrap(),
        s.inspect("v2.cdimg")["bytes"].as_u64().unwrap(),
    );
    assert!(db * 3 < vb, "delta {db} bytes vs image {vb}");
    // libcrypto moved from /opt/app-<v1> to /opt/app-<v2>: a delta, not a new file.
    let r = Reader::open(Path::new(&s.p("d12.cdimg"))).unwrap();
    let moved = r
        .header()
        .entries
        .iter()
        .find(|e| e.path.starts_with("opt/app-") && e.path.ends_with("libcrypto.so.3"))
        .unwrap();
    assert!(
        matches!(moved.data, Some(Data::Delta { .. })),
        "{:?}",
        moved.data
    );
}

#[test]
fn same_input_gives_the_same_bytes() {
    let s = series();
    let layout = s.p("oci");
    s.ok(&[
        "convert",
        &format!("{layout}:v2"),
        "-o",
        &s.p("again-v2.cdimg"),
        "--level",
        "3",
        "--threads",
        "1",
    ]);
    assert_eq!(
        std::fs::read(s.p("again-v2.cdimg")).unwrap(),
        std::fs::read(s.p("v2.cdimg")).unwrap()
    );
    s.ok(&[
        "diff",
        "--old",
        &s.p("v1.cdimg"),
        "--new",
        &s.p("v2.cdimg"),
        "-o",
        &s.p("again-d12.cdimg"),
        "--threads",
        "1",
    ]);
    assert_eq!(
        std::fs::read(s.p("again-d12.cdimg")).unwrap(),
        std::fs::read(s.p("d12.cdimg")).unwrap()
    );
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let s = series();
    let out = s.p("never.cdimg");
    // A delta applied to the wrong base.
    let e = s.fails(&[
        "patch",
        "--base",
        &s.p("v2.cdimg"),
        "--delta",
        &s.p("d12.cdimg"),
        "-o",
        &out,
    ]);
    assert!(e.contains("applies to image"), "{e}");
    // A truncated file, and one with a flipped byte in a blob.
    let data = std::fs::read(s.p("d12.cdimg")).unwrap();
    std::fs::write(s.p("trunc.cdimg"), &data[..data.len() - 10]).unwrap();
    let e = s.fails(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("trunc.cdimg"),
        "-o",
        &out,
    ]);
    assert!(e.contains("trunc.cdimg"), "{e}");
    let (offset, e_path) = d4c_tests::series::first_delta_byte(Path::new(&s.p("d12.cdimg")));
    let mut bad = data.clone();
    bad[offset as usize] ^= 0x5a;
    std::fs::write(s.p("flipped.cdimg"), &bad).unwrap();
    let e = s.fails(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("flipped.cdimg"),
        "-o",
        &s.p("never-dir"),
    ]);
    assert!(e.contains(&e_path), "error should name {e_path}: {e}");
    // A flipped byte in a full image's stored (uncompressed) blob: the file is named.
    let v1 = std::fs::read(s.p("v1.cdimg")).unwrap();
    let r = Reader::open(Path::new(&s.p("v1.cdimg"))).unwrap();
    let (offset, e_path) = r
        .header()
        .entries
        .iter()
        .filter(|e| e.file_size() > 1000)
        .find_map(|e| match &e.data {
            Some(Data::Full { offset, length, .. }) => Some((offset + length / 2, e.path.clone())),
            _ => None,
        })
        .unwrap();
    let mut bad = v1;
    bad[offset as usize] ^= 0x01;
    std::fs::write(s.p("flipped-v1.cdimg"), &bad).unwrap();
    let e = s.fails(&["extract", &s.p("flipped-v1.cdimg"), "-o", &s.p("never-dir")]);
    assert!(e.contains(&e_path), "error should name {e_path}: {e}");
    // A tampered layer blob in an OCI layout: convert names the blob's digest.
    let tampered = s.dir.join("oci-tampered");
    sh(Command::new("cp").arg("-a").arg(s.p("oci")).arg(&tampered)).unwrap();
    let blobs = tampered.join("blobs/sha256");
    let json = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap()
    };
    let v1_manifest = d4c_tests::tagged_manifest(&tampered, "v1");
    let last_layer = json(&v1_manifest)["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer = blobs.join(last_layer.trim_start_matches("sha256:"));
    let mut data = std::fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&layer, &data).unwrap();
    let name = layer.file_name().unwrap().to_string_lossy().into_owned();
    let e = s.fails(&["convert", &format!("{}:v1", tampered.display()), "-o", &out]);
    assert!(
        e.contains(&name[..12]),
        "error should name blob {name}: {e}"
    );
    // Not a cdimg at all; a delta given as the base.
    let e = s.fails(&["inspect", &s.p("oci/index.json")]);
    assert!(e.contains("not a cdimg"), "{e}");
    let e = s.fails(&["extract", &s.p("d12.cdimg"), "-o", &s.p("never-dir")]);
    assert!(e.contains("delta"), "{e}");
    assert!(!Path::new(&out).exists() && !Path::new(&s.p("never-dir")).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".d4c-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_codec_the_machine_lacks_is_named() {
    let s = series();
    let dir = s.dir.join("third-party");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("template.wasm");
    std::fs::write(&wasm, d4c_tests::components::TEMPLATE).unwrap();
    let delta = s.p("third-party/d12-template.cdimg");
    s.ok(&[
        "diff",
        "--old",
        &s.p("v1.cdimg"),
        "--new",
        &s.p("v2.cdimg"),
        "--codec",
        &wasm.to_string_lossy(),
        "-o",
        &delta,
    ]);
    // Another machine (a fresh D4C_HOME) without the component.
    let other = d4c_tests::run_d4c(
        Path::new(env!("CARGO_BIN_EXE_d4c")),
        &dir.join("fresh-home"),
        &[
            "patch",
            "--base",
            &s.p("v1.cdimg"),
            "--delta",
            &delta,
            "-o",
            &s.p("third-party/out.cdimg"),
        ],
    );
    assert!(!other.0);
    let sha = d4c_host::digest::Digest::of(d4c_tests::components::TEMPLATE).hex();
    assert!(
        other.2.contains("template") && other.2.contains(&sha),
        "{}",
        other.2
    );
    // The machine that ran the diff stored the codec and can patch.
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &delta,
        "-o",
        &s.p("third-party/out.cdimg"),
    ]);
}

/// A tar stream from (header, data) pairs.
fn tar(entries: Vec<(tar::Header, &[u8], &[u8])>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (mut h, path, data) in entries {
        // Raw name bytes: the tar crate's path setters refuse the hostile names
        // these tests need (`..`).
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn hdr(kind: tar::EntryType, mode: u32, size: u64, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h
}

#[test]
fn layer_edge_cases_match_umoci() {
    use tar::EntryType as T;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let mut dev = hdr(T::Char, 0o600, 0, None);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    let mut blk = hdr(T::Block, 0o600, 0, None);
    blk.set_device_major(7).unwrap();
    blk.set_device_minor(0).unwrap();
    let xattr = pax_record("SCHILY.xattr.user.d4c", b"\x00binary\xff");
    let long_name = format!("long/{}/{}", "n".repeat(120), "m".repeat(150));
    let long = pax_record("path", long_name.as_bytes());
    let l1 = tar(vec![
        (hdr(T::Directory, 0o755, 0, None), b"etc/", b""),
        (
            hdr(T::XHeader, 0o644, xattr.len() as u64, None),
            b"pax",
            &xattr,
        ),
        (hdr(T::Regular, 0o644, 5, None), b"etc/xattr", b"attrs"),
        (
            hdr(T::XHeader, 0o644, long.len() as u64, None),
            b"pax",
            &long,
        ),
        (hdr(T::Regular, 0o644, 4, None), b"placeholder", b"long"),
        (hdr(T::Regular, 0o644, 5, None), b"etc/a", b"hello"),
        (hdr(T::Link, 0o644, 0, Some("etc/a")), b"etc/hard", b""),
        (hdr(T::Regular, 0o4755, 3, None), b"etc/suid", b"abc"),
        (hdr(T::Symlink, 0o777, 0, Some("a")), b"etc/sym", b""),
        (hdr(T::Symlink, 0o777, 0, Some("loop2")), b"etc/loop1", b""),
        (hdr(T::Symlink, 0o777, 0, Some("loop1")), b"etc/loop2", b""),
        (hdr(T::Regular, 0o644, 0, None), b"etc/empty", b""),
        (
            hdr(T::Regular, 0o644, 4, None),
            b"etc/odd\xff\xfe name",
            b"odd!",
        ),
        (dev, b"dev/null", b""),
        (blk, b"dev/loop0", b""),
        (hdr(T::Fifo, 0o644, 0, None), b"run/pipe", b""),
        (hdr(T::Regular, 0o644, 2, None), b"opq/x", b"xx"),
        (hdr(T::Regular, 0o644, 2, None), b"opq/sub/y", b"yy"),
        (hdr(T::Regular, 0o644, 2, None), b"keep/k1", b"k1"),
        (hdr(T::Regular, 0o644, 2, None), b"keep/k2", b"k2"),
        (
            hdr(T::Regular, 0o600, 4, None),
            b"nested/deep/dir/file",
            b"deep",
        ),
    ]);
    let l2 = tar(vec![
        // The hardlink's target is replaced: the link keeps the old content.
        (hdr(T::Regular, 0o640, 7, None), b"etc/a", b"goodbye"),
        (hdr(T::Regular, 0o644, 0, None), b"opq/.wh..wh..opq", b""),
        (hdr(T::Regular, 0o644, 2, None), b"opq/z", b"zz"),
        (hdr(T::Regular, 0o644, 0, None), b"keep/.wh.k1", b""),
        (hdr(T::Regular, 0o644, 0, None), b".wh.nested", b""),
    ]);
    d4c_tests::write_layout(&layout, "edge", &[l1, l2]).unwrap();
    let home = dir.path().join("home");
    let d4c = |args: &[&str]| d4c_tests::run_d4c(Path::new(env!("CARGO_BIN_EXE_d4c")), &home, args);
    let img = dir.path().join("edge.cdimg").to_string_lossy().into_owned();
    let (ok, _, err) = d4c(&["convert", &format!("{}:edge", layout.display()), "-o", &img]);
    assert!(ok, "{err}");
    let out = dir.path().join("x");
    let (ok, _, err) = d4c(&["extract", &img, "-o", &out.to_string_lossy()]);
    assert!(ok, "{err}");
    let bundle = dir.path().join("umoci");
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:edge", layout.display()))
        .arg(&bundle))
    .unwrap();
    assert_eq!(tree_listing(&out), tree_listing(&bundle.join("rootfs")));
    assert_eq!(std::fs::read(out.join("etc/hard")).unwrap(), b"hello");
    assert_eq!(std::fs::read(out.join("etc/a")).unwrap(), b"goodbye");
    assert!(
        !out.join("opq/x").exists() && out.join("opq/z").exists() && !out.join("nested").exists()
    );
    assert_eq!(std::fs::read(out.join(&long_name)).unwrap(), b"long");
    assert!(tree_listing(&out).iter().any(|l| l.contains("user.d4c=00")));

    // Exported, the same tree comes back: through umoci, and through convert.
    let exported = dir.path().join("exported");
    let (ok, _, err) = d4c(&["export", &img, "-o", &format!("{}:e", exported.display())]);
    assert!(ok, "{err}");
    let bundle = dir.path().join("umoci-export");
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:e", exported.display()))
        .arg(&bundle))
    .unwrap();
    assert_eq!(tree_listing(&out), tree_listing(&bundle.join("rootfs")));
    let again = dir
        .path()
        .join("again.cdimg")
        .to_string_lossy()
        .into_owned();
    let (ok, _, err) = d4c(&[
        "convert",
        &format!("{}:e", exported.display()),
        "-o",
        &again,
    ]);
    assert!(ok, "{err}");
    let id = |p: &str| -> serde_json::Value {
        let (ok, out, err) = d4c(&["inspect", p, "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["image_id"].clone()
    };
    assert_eq!(id(&img), id(&again));
}

#[test]
fn entries_escaping_the_root_are_rejected_by_name() {
    use tar::EntryType as T;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for (name, layer) in [
        (
            "dotdot",
            tar(vec![(
                hdr(T::Regular, 0o644, 1, None),
                b"a/../../evil",
                b"x",
            )]),
        ),
        (
            "through-symlink",
            tar(vec![
                (hdr(T::Symlink, 0o777, 0, Some("/etc")), b"ln", b""),
                (hdr(T::Regular, 0o644, 1, None), b"ln/passwd", b"x"),
            ]),
        ),
    ] {
        let layout = dir.path().join(name);
        d4c_tests::write_layout(&layout, "t", &[layer]).unwrap();
        let out = dir.path().join(format!("{name}.cdimg"));
        let (ok, _, err) = d4c_tests::run_d4c(
            Path::new(env!("CARGO_BIN_EXE_d4c")),
            &home,
            &[
                "convert",
                &layout.to_string_lossy(),
                "-o",
                &out.to_string_lossy(),
            ],
        );
        assert!(!ok, "{name} accepted");
        assert!(
            err.contains("evil") || err.contains("ln/passwd"),
            "{name}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}

/// An uncompressed layer holding one sparse file of `size` bytes, zero but for
/// `head` at its start and `tail` at its end; the tar itself is sparse on disk.
fn sparse_layer(path: &Path, name: &str, size: u64, head: &[u8], tail: &[u8]) {
    use std::os::unix::fs::FileExt;
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let f = std::fs::File::create(path).unwrap();
    f.write_all_at(h.as_bytes(), 0).unwrap();
    f.write_all_at(head, 512).unwrap();
    f.write_all_at(tail, 512 + size - tail.len() as u64)
        .unwrap();
    // Data padded to 512, then two zero blocks end the archive.
    f.set_len(512 + size.div_ceil(512) * 512 + 1024).unwrap();
}

/// sha256 of the content [`sparse_layer`] describes.
fn sparse_digest(size: u64, head: &[u8], tail: &[u8]) -> d4c_host::digest::Digest {
    let mut h = d4c_host::digest::Hasher::default();
    h.update(head);
    let zeros = vec![0u8; 1 << 20];
    let mut left = size - head.len() as u64 - tail.len() as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    h.update(tail);
    h.finish()
}

#[test]
fn a_file_over_4_gib_streams_through_convert_diff_patch_extract_export() {
    use std::io::Read;
    use std::os::unix::fs::{FileExt, MetadataExt};
    const SIZE: u64 = (4 << 30) + (1 << 20) + 7;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let d4c = |args: &[&str]| {
        let (ok, out, err) = d4c_tests::run_d4c(Path::new(env!("CARGO_BIN_EXE_d4c")), &home, args);
        assert!(ok, "d4c {args:?}: {err}");
        out
    };
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (v, tail) in [("v1", b"tail-one"), ("v2", b"tail-two")] {
        let tar = dir.path().join(format!("{v}.tar"));
        sparse_layer(&tar, "big/sparse.bin", SIZE, b"head", tail);
        d4c_tests::write_layout_files(&dir.path().join(v), v, &[tar]).unwrap();
        d4c(&[
            "convert",
            &format!("{}:{v}", p(v)),
            "-o",
            &p(&format!("{v}.cdimg")),
        ]);
    }
    d4c(&[
        "diff",
        "--old",
        &p("v1.cdimg"),
        "--new",
        &p("v2.cdimg"),
        "-o",
        &p("d.cdimg"),
    ]);
    d4c(&[
        "patch",
        "--base",
        &p("v1.cdimg"),
        "--delta",
        &p("d.cdimg"),
        "-o",
        &p("p2.cdimg"),
    ]);
    d4c(&["extract", &p("p2.cdimg"), "-o", &p("x")]);

    let big = dir.path().join("x/big/sparse.bin");
    let meta = std::fs::metadata(&big).unwrap();
    assert_eq!(meta.len(), SIZE);
    // Written sparse: far fewer blocks than bytes.
    assert!(meta.blocks() * 512 < 64 << 20, "{} blocks", meta.blocks());
    let f = std::fs::File::open(&big).unwrap();
    let mut end = [0u8; 8];
    f.read_exact_at(&mut end, SIZE - 8).unwrap();
    assert_eq!(&end, b"tail-two");
    let mut h = d4c_host::digest::Hasher::default();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert_eq!(h.finish(), sparse_digest(SIZE, b"head", b"tail-two"));

    // Exported from the chain and converted back: the same image.
    d4c(&[
        "export",
        &p("v1.cdimg"),
        &p("d.cdimg"),
        "-o",
        &format!("{}:v2", p("exp")),
    ]);
    d4c(&[
        "convert",
        &format!("{}:v2", p("exp")),
        "-o",
        &p("re2.cdimg"),
    ]);
    let id = |img: &str| {
        serde_json::from_str::<serde_json::Value>(&d4c(&["inspect", img, "--json"])).unwrap()
            ["image_id"]
            .clone()
    };
    assert_eq!(id(&p("re2.cdimg")), id(&p("v2.cdimg")));
}

/// Real ELF binaries of this machine, the base of the dictionary test's series.
fn host_binaries() -> Vec<(String, Vec<u8>)> {
    let names = [
        "ls", "cp", "mv", "rm", "ln", "cat", "chmod", "chown", "mkdir", "touch", "head", "tail",
        "sort", "uniq", "wc", "cut", "tr", "tee", "du", "df", "date", "env",
    ];
    names
        .iter()
        .filter_map(|n| {
            let b = std::fs::read(Path::new("/usr/bin").join(n)).ok()?;
            b.starts_with(b"\x7fELF").then(|| (n.to_string(), b))
        })
        .collect()
}

/// A layer with `files` under `bin/`.
fn bin_layer(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    layer_in("bin", files)
}

/// A layer with `files` under `dir/`.
fn layer_in(dir: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = hdr(tar::EntryType::Regular, 0o755, data.len() as u64, None);
        h.set_path(format!("{dir}/{name}")).unwrap();
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn shared_dictionaries_shrink_many_files_with_the_same_new_code_and_stay_correct() {
    let dir = tempfile::tempdir().unwrap();
    let s = Series::empty(Path::new(env!("CARGO_BIN_EXE_d4c")), dir.path());

    // v1: real binaries. v2: each with the same 48 KiB of new "library code"
    // linked in (incompressible bytes, as machine code nearly is) and a version
    // string changed: what a toolchain update does to a hundred small binaries.
    // v3: one more small edit per file.
    let v1 = host_binaries();
    assert!(v1.len() >= 10, "too few binaries in /usr/bin: {}", v1.len());
    let mut code = Vec::with_capacity(48 << 10);
    let mut seed = d4c_host::digest::Digest::of(b"new library code");
    while code.len() < 48 << 10 {
        code.extend_from_slice(&seed.0);
        seed = d4c_host::digest::Digest::of(&seed.0);
    }
    let v2: Vec<(String, Vec<u8>)> = v1
        .iter()
        .map(|(n, b)| {
            let mut b = b.clone();
            let at = b.len() / 2;
            b.splice(at..at, code.iter().copied());
            b[100..108].copy_from_slice(b"v2.0.0\0\0");
            (n.clone(), b)
        })
        .collect();
    let v3: Vec<(String, Vec<u8>)> = v2
        .iter()
        .map(|(n, b)| {
            let mut b = b.clone();
            b[100..108].copy_from_slice(b"v3.0.0\0\0");
            (n.clone(), b)
        })
        .collect();
    for (v, files) in [("v1", &v1), ("v2", &v2), ("v3", &v3)] {
        d4c_tests::write_layout(&dir.path().join(v), v, &[bin_layer(files)]).unwrap();
        s.convert(v, v);
    }
    let diff = |old: &str, new: &str, out: &str, extra: &[&str]| {
        let (ok, _, err) = s.diff(old, new, out, extra);
        assert!(ok, "diff {out}: {err}");
    };
    diff("v1.cdimg", "v2.cdimg", "d12.cdimg", &[]);
    diff("v1.cdimg", "v2.cdimg", "plain.cdimg", &["--no-dicts"]);
    diff("v2.cdimg", "v3.cdimg", "d23.cdimg", &[]);

    // One dictionary, used by every file, and it pays: without it each file
    // carries the new code again.
    let d12 = s.inspect("d12.cdimg");
    let dicts = d12["dicts"].as_array().unwrap();
    assert_eq!(dicts.len(), 1, "{d12}");
    assert_eq!(
        dicts[0]["files"].as_u64().unwrap() as usize,
        v1.len(),
        "{d12}"
    );
    let plain = s.inspect("plain.cdimg");
    assert_eq!(plain["dicts"].as_array().unwrap().len(), 0);
    // v2 -> v3 leaves every file nearly unchanged: no dictionary to share.
    let d23 = s.inspect("d23.cdimg");
    assert_eq!(d23["dicts"].as_array().unwrap().len(), 0, "{d23}");
    assert_eq!(
        d23["files"]["delta"].as_u64().unwrap() as usize,
        v1.len(),
        "{d23}"
    );
    let (with, without) = (
        d12["bytes"].as_u64().unwrap(),
        plain["bytes"].as_u64().unwrap(),
    );
    assert!(
        with * 3 < without,
        "with dictionary {with} bytes, without {without}"
    );
    // The same inputs give the same bytes (training is deterministic).
    diff("v1.cdimg", "v2.cdimg", "again.cdimg", &["--threads", "1"]);
    assert_eq!(
        std::fs::read(s.p("again.cdimg")).unwrap(),
        std::fs::read(s.p("d12.cdimg")).unwrap()
    );

    // patch, extract and a merge across a dictionary step give exactly v2 and v3.
    s.patch("v1.cdimg", &["d12.cdimg"], "p2.cdimg");
    s.same_image("p2.cdimg", "v2.cdimg");
    s.ok(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("d12.cdimg"),
        "-o",
        &s.p("x12"),
    ]);
    s.ok(&["extract", &s.p("v2.cdimg"), "-o", &s.p("x2")]);
    assert_eq!(
        tree_listing(Path::new(&s.p("x12"))),
        tree_listing(Path::new(&s.p("x2")))
    );
    s.merge("d12.cdimg", "d23.cdimg", "d13.cdimg");
    let d13 = s.inspect("d13.cdimg");
    assert_eq!(d13["dicts"].as_array().unwrap().len(), 1, "{d13}");
    s.patch("v1.cdimg", &["d13.cdimg"], "p3.cdimg");
    s.same_image("p3.cdimg", "v3.cdimg");

    // A flipped byte in the dictionary's blob is caught and named.
    let r = Reader::open(Path::new(&s.p("d12.cdimg"))).unwrap();
    let at = r.header().dicts[0].offset + r.header().dicts[0].length / 2;
    let mut bytes = std::fs::read(s.p("d12.cdimg")).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(s.p("bad.cdimg"), &bytes).unwrap();
    let err = s.fails(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("bad.cdimg"),
        "-o",
        &s.p("never"),
    ]);
    assert!(err.contains("dictionary"), "{err}");
    assert!(!Path::new(&s.p("never")).exists());
}

#[test]
fn a_codec_failing_on_files_leaves_them_to_full_storage_with_a_warning() {
    use d4c_tests::components;
    let s = series();
    // One traps in diff; the other's deltas do not patch back to the new file.
    for (name, wasm) in [("trap", components::TRAP), ("liar", components::LIAR)] {
        let codec = s.p(&format!("{name}.wasm"));
        std::fs::write(&codec, wasm).unwrap();
        let out = format!("d12-{name}.cdimg");
        let (ok, _, err) = s.diff("v1.cdimg", "v2.cdimg", &out, &["--codec", &codec]);
        assert!(ok, "{name}: {err}");
        assert!(err.contains("warning: codec failed on"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let d = s.inspect(&out);
        assert_eq!(d["files"]["delta"], 0, "{name}: {d}");
        s.patch("v1.cdimg", &[&out], &format!("p2-{name}.cdimg"));
        s.same_image(&format!("p2-{name}.cdimg"), "v2.cdimg");
    }
}

/// Runs the system's `gzip` (GNU gzip, which Debian compresses packages' man
/// pages and changelogs with) as a filter.
fn gzip_tool(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "gzip {args:?} failed");
    out.stdout
}

/// A gzip file holding `data` in one stored (uncompressed) deflate block: valid
/// gzip that no zlib setting produces.
fn stored_gzip(data: &[u8]) -> Vec<u8> {
    let crc = data.iter().fold(!0u32, |mut c, &b| {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
        c
    });
    let n = data.len() as u16;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1];
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(!n).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn gzip_files_are_diffed_by_their_content_and_rebuilt_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let s = Series::empty(Path::new(env!("CARGO_BIN_EXE_d4c")), dir.path());

    // v1: real man pages as Debian ships them (gzip -9n). v2: the same pages
    // after a documentation update, compressed again by the same tool.
    let version = &d4c_tests::debian_versions("openssl").unwrap()[0];
    let root = d4c_tests::debian_root("openssl", version).unwrap();
    let man = root.join("usr/share/man/man1");
    let mut names: Vec<_> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| {
            f.extension().is_some_and(|x| x == "gz")
                && !f.is_symlink()
                && f.metadata().unwrap().len() < 6000
        })
        .collect();
    names.sort();
    names.truncate(40);
    assert!(
        names.len() >= 20,
        "too few man pages in openssl {version}: {}",
        names.len()
    );
    let mut v1: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(f).unwrap())
        })
        .collect();
    // And the upstream changelog: large, so GNU gzip wrote it in blocks that
    // zlib alone does not end in the same places.
    let changelog = std::fs::read(root.join("usr/share/doc/openssl/changelog.gz")).unwrap();
    assert!(changelog.len() > 100_000, "{}", changelog.len());
    v1.push(("changelog.gz".into(), changelog));
    let mut v2: Vec<(String, Vec<u8>)> = v1
        .iter()
        .map(|(n, gz)| {
            let text = String::from_utf8(gzip_tool(&["-dc"], gz)).unwrap();
            let text = text.replacen(".SH", ".SH NOTES\nUpdated for 3.5.\n.SH", 1) + ".\\\" end\n";
            (n.clone(), gzip_tool(&["-9n"], text.as_bytes()))
        })
        .collect();
    // One more file: gzip that no zlib setting reproduces (one stored block).
    let odd = |text: &str| {
        (
            "odd.gz".to_string(),
            stored_gzip(text.repeat(50).as_bytes()),
        )
    };
    v1.push(odd("first version\n"));
    v2.push(odd("second version\n"));
    for (v, files) in [("v1", &v1), ("v2", &v2)] {
        d4c_tests::write_layout(&dir.path().join(v), v, &[layer_in("man1", files)]).unwrap();
        s.convert(v, v);
    }
    for (out, extra) in [
        ("d12.cdimg", &[][..]),
        ("z12.cdimg", &["--codec", "zstd-dict"][..]),
    ] {
        let (ok, _, err) = s.diff("v1.cdimg", "v2.cdimg", out, extra);
        assert!(ok && !err.contains("warning"), "diff {out}: {err}");
    }

    let d12 = s.inspect("d12.cdimg");
    let gz = d12["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gzip")
        .unwrap_or_else(|| panic!("gzip codec unused: {d12}"));
    // Every file GNU gzip wrote is rebuilt (small ones by plain zlib, the
    // changelog with its block ends); the stored block is not, and goes to a
    // byte-level codec without a warning.
    assert_eq!(
        gz["files"].as_u64().unwrap() as usize,
        v2.len() - 1,
        "{d12}"
    );
    // On deflate streams a byte-level codec sees noise from the first change on.
    let (with, bytewise) = (
        gz["bytes"].as_u64().unwrap(),
        s.inspect("z12.cdimg")["bytes"].as_u64().unwrap(),
    );
    assert!(
        with * 4 < bytewise,
        "gzip deltas {with} bytes, zstd-dict's whole delta {bytewise}"
    );

    // Rebuilt bit for bit: the patched image is v2, and so are its files.
    s.patch("v1.cdimg", &["d12.cdimg"], "p2.cdimg");
    s.same_image("p2.cdimg", "v2.cdimg");
    s.ok(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("d12.cdimg"),
        "-o",
        &s.p("root"),
    ]);
    for (name, bytes) in &v2 {
        let got = std::fs::read(dir.path().join("root/man1").join(name)).unwrap();
        assert_eq!(&got, bytes, "{name}");
    }
}
