//! The breakout corpus: hand-made hostile cdimgs (escaped `..`, escaped `/`,
//! absolute names, NUL bytes, links out of the tree and through links,
//! hardlinks and devices with such names, headers that claim huge files),
//! written as an attacker would, bypassing d4c's writer. Each is inspected,
//! extracted, exported, merged and mounted inside a sentinel tree; nothing
//! outside the command's own output may change, no process may die of a
//! signal, and refusals are one clear line.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use d4c_host::digest::Digest;
use d4c_host::image::entry::{Entry, Kind};
use d4c_tests::raw::{builtin_codec, device, entry, huge_claim_chain, link, Raw};

fn d4c() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_d4c"))
}

/// A sentinel tree: the commands write below `work/`; everything else in it
/// (and `outside`, a name the hostile entries aim at) must stay as it was.
struct Sentinel {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Sentinel {
    fn new() -> Sentinel {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("work")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::write(root.join("secret"), b"keep me").unwrap();
        Sentinel { _tmp: tmp, root }
    }

    fn work(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    /// Every path outside `work/` with its type, mode and content.
    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// Runs d4c; returns (ok, stderr). Never killed by a signal.
    fn d4c(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(d4c())
            .args(args)
            .env("D4C_HOME", self.root.join("home"))
            .env_remove("D4C_CODEC_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.signal().is_none(),
            "d4c {args:?} died of signal {:?}: {}",
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs d4c, which must refuse with a one-line error naming `why`.
    fn refuses(&self, args: &[&str], why: &str) {
        let (ok, err) = self.d4c(args);
        assert!(!ok, "d4c {args:?} accepted a hostile image");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "d4c {args:?}: not one line: {err}");
        assert!(err.contains(why), "d4c {args:?}: {err} (wanted {why:?})");
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "work" || rel == "home" {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.is_file() {
            format!("{:o} {:?}", m.mode(), std::fs::read(&p).unwrap())
        } else {
            format!("{:o} {}", m.mode(), m.file_type().is_dir())
        };
        out.insert(rel, what);
        if m.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Makes a hostile tree, its file contents stored in the image being made.
type MakeEntries = Box<dyn Fn(&mut Raw) -> Vec<Entry>>;

/// Images whose names reach out of the tree (or hide a `/`): every reader must
/// refuse them as invalid, before anything is written.
fn escaping_images(s: &Sentinel) -> Vec<(&'static str, PathBuf)> {
    let abs = s.root.join("abs-pwned").to_string_lossy().into_owned();
    let cases: Vec<(&'static str, MakeEntries)> = vec![
        (
            "escaped dot-dot directories",
            Box::new(|r| {
                vec![
                    entry("\\x2e\\x2e", Kind::Dir),
                    entry("\\x2e\\x2e/\\x2e\\x2e", Kind::Dir),
                    r.file("\\x2e\\x2e/\\x2e\\x2e/pwned", b"pwned"),
                ]
            }),
        ),
        (
            "an escaped slash inside one name",
            Box::new(|r| vec![r.file("\\x2e\\x2e\\x2f\\x2e\\x2e\\x2fpwned", b"pwned")]),
        ),
        (
            "a literal dot-dot",
            Box::new(|r| vec![r.file("../../pwned", b"pwned")]),
        ),
        ("an absolute name", {
            let abs = abs.clone();
            Box::new(move |r| vec![r.file(&abs, b"pwned")])
        }),
        (
            "a NUL byte in a name",
            Box::new(|r| vec![r.file("a\0b", b"pwned")]),
        ),
        (
            "a non-canonical escape",
            Box::new(|r| vec![r.file("\\x41", b"pwned")]),
        ),
        (
            "a file below a symlink",
            Box::new(|r| {
                vec![
                    link("l", Kind::Symlink, "../.."),
                    r.file("l/pwned", b"pwned"),
                ]
            }),
        ),
        (
            "a hardlink to a file outside",
            Box::new(|_| vec![link("h", Kind::Hardlink, "../../secret")]),
        ),
        (
            "a hardlink to a symlink",
            Box::new(|_| {
                vec![
                    link("h", Kind::Hardlink, "s"),
                    link("s", Kind::Symlink, "/etc/shadow"),
                ]
            }),
        ),
        (
            "a device with an escaped dot-dot name",
            Box::new(|_| {
                vec![
                    entry("\\x2e\\x2e", Kind::Dir),
                    device("\\x2e\\x2e/dev-pwned"),
                ]
            }),
        ),
        (
            "a symlink with an escaped slash in its name",
            Box::new(|_| vec![link("\\x2e\\x2e\\x2fsl", Kind::Symlink, "/")]),
        ),
        (
            "a symlink target with a NUL byte",
            Box::new(|_| vec![link("sl", Kind::Symlink, "/etc\0/x")]),
        ),
        (
            "an extended attribute name that breaks a PAX record",
            Box::new(|r| {
                let mut e = r.file("x", b"x");
                e.xattrs.insert("user.a=b".into(), b"v".to_vec());
                vec![e]
            }),
        ),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, make))| {
            let mut r = Raw::new();
            let entries = make(&mut r);
            let p = s.work(&format!("hostile-{i}.cdimg"));
            r.write(&p, None, vec![], entries);
            (what, p)
        })
        .collect()
}

#[test]
fn escaping_names_are_refused_by_every_command() {
    let s = Sentinel::new();
    let before = s.outside();
    for (i, (what, img)) in escaping_images(&s).into_iter().enumerate() {
        let img = img.to_string_lossy().into_owned();
        let out = s.work(&format!("out-{i}")).to_string_lossy().into_owned();
        eprintln!("case: {what}");
        s.refuses(&["inspect", &img], "invalid header");
        s.refuses(&["extract", &img, "-o", &out], "invalid header");
        s.refuses(
            &["export", &img, "-o", &format!("{out}-oci:t")],
            "invalid header",
        );
        let mnt = s.work(&format!("mnt-{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        s.refuses(
            &["mount", &img, &mnt.to_string_lossy(), "--cache-dir", &out],
            "invalid header",
        );
        assert!(!Path::new(&out).exists(), "{what}: {out} was written");
        assert_eq!(s.outside(), before, "{what}: the sentinel tree changed");
    }
}

/// A valid image whose links point out of the tree: links are data. Extract
/// and export write them as links, never through them; the mount shows them.
#[test]
fn links_out_of_the_tree_are_written_as_links_never_followed() {
    let s = Sentinel::new();
    let before = s.outside();
    let secret = s.root.join("secret").to_string_lossy().into_owned();
    let mut r = Raw::new();
    let f = r.file("f", b"inside");
    let img = s.work("links.cdimg");
    r.write(
        &img,
        None,
        vec![],
        vec![
            f,
            link("abs", Kind::Symlink, &secret),
            link("up", Kind::Symlink, "../../.."),
            link("hl", Kind::Hardlink, "f"),
            device("blk"),
        ],
    );
    let img = img.to_string_lossy().into_owned();
    let out = s.work("out");
    let (ok, err) = s.d4c(&["extract", &img, "-o", &out.to_string_lossy()]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_link(out.join("abs")).unwrap(),
        Path::new(&secret)
    );
    assert_eq!(
        std::fs::read_link(out.join("up")).unwrap(),
        Path::new("../../..")
    );
    assert_eq!(std::fs::read(out.join("hl")).unwrap(), b"inside");
    let (ok, err) = s.d4c(&[
        "export",
        &img,
        "-o",
        &format!("{}:t", s.work("oci").display()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(s.outside(), before, "the sentinel tree changed");
}

/// Headers that claim a 1 TiB file: no command sizes memory from them, none
/// aborts, each says what is wrong.
#[test]
fn a_header_claiming_a_huge_file_is_an_error_not_an_abort() {
    let s = Sentinel::new();
    huge_claim_chain(&s.work(""), builtin_codec(d4c(), "bsdiff"));

    let w = |n: &str| s.work(n).to_string_lossy().into_owned();
    let too_large = "more than content rebuilt in memory may be";
    s.refuses(
        &[
            "merge",
            "--lower",
            &w("d1.cdimg"),
            "--upper",
            &w("d2.cdimg"),
            "-o",
            &w("m.cdimg"),
        ],
        too_large,
    );
    s.refuses(
        &[
            "extract",
            &w("v1.cdimg"),
            &w("d1.cdimg"),
            &w("d2.cdimg"),
            "-o",
            &w("x"),
        ],
        too_large,
    );
    s.refuses(
        &[
            "patch",
            "--base",
            &w("v1.cdimg"),
            "--delta",
            &w("d1.cdimg"),
            &w("d2.cdimg"),
            "-o",
            &w("p.cdimg"),
        ],
        too_large,
    );
    // Stored in full, it streams: the size is checked against the bytes.
    s.refuses(
        &["extract", &w("v1.cdimg"), &w("d1.cdimg"), "-o", &w("y")],
        "f",
    );
    for out in ["m.cdimg", "x", "p.cdimg", "y"] {
        assert!(!s.work(out).exists(), "{out} was written");
    }
}

fn tar_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// A member of a test archive.
enum Member<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
}

/// A tar archive of `members`.
fn archive(path: &Path, members: &[(&str, Member)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, what) in members {
        let mut h = tar_header();
        match what {
            Member::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Member::File(data) => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            Member::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// One layer tar with one file.
fn one_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header();
    h.set_size(6);
    b.append_data(&mut h, "app", &b"hello\n"[..]).unwrap();
    b.into_inner().unwrap()
}

const MANIFEST: &[u8] =
    br#"[{"Config":"config.json","RepoTags":["t:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;

/// `convert docker-archive:` reads members from the stream only: a symlinked
/// config or layer never pulls a host file into the image (which `push` would
/// publish), a hardlink or device member is refused, and every layer must
/// match its diff_id. A symlink to another member (docker's way of storing a
/// layer twice) works.
#[test]
fn a_docker_archive_cannot_reach_host_files() {
    let s = Sentinel::new();
    let before = s.outside();
    let layer = one_layer();
    let secret = s.root.join("secret").to_string_lossy().into_owned();
    let convert = |name: &str| -> (bool, String) {
        let a = s.work(name).to_string_lossy().into_owned();
        let out = s
            .work(&format!("{name}.cdimg"))
            .to_string_lossy()
            .into_owned();
        s.d4c(&["convert", &format!("docker-archive:{a}"), "-o", &out])
    };
    let two = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).oci(), Digest::of(&layer).oci()]},
    });
    let two = serde_json::to_vec(&two).unwrap();

    // A symlinked config.json pointing at a host file.
    archive(
        &s.work("a1.tar"),
        &[
            ("manifest.json", Member::File(MANIFEST)),
            ("config.json", Member::Symlink(&secret)),
            ("l1/layer.tar", Member::File(&layer)),
            ("l2/layer.tar", Member::Symlink("../l1/layer.tar")),
        ],
    );
    let (ok, err) = convert("a1.tar");
    assert!(!ok && err.contains("links outside the archive"), "{err}");
    // A layer through a parent-directory link.
    archive(
        &s.work("a2.tar"),
        &[
            ("manifest.json", Member::File(MANIFEST)),
            ("config.json", Member::File(&two)),
            ("l1/layer.tar", Member::File(&layer)),
            (
                "l2/layer.tar",
                Member::Symlink("../../../../../../etc/passwd"),
            ),
        ],
    );
    let (ok, err) = convert("a2.tar");
    assert!(!ok && err.contains("links outside the archive"), "{err}");
    // A layer that does not match its diff_id.
    let mut other = layer.clone();
    other[600] ^= 1;
    archive(
        &s.work("a3.tar"),
        &[
            ("manifest.json", Member::File(MANIFEST)),
            ("config.json", Member::File(&two)),
            ("l1/layer.tar", Member::File(&other)),
            ("l2/layer.tar", Member::Symlink("../l1/layer.tar")),
        ],
    );
    let (ok, err) = convert("a3.tar");
    assert!(!ok && err.contains("diff_id"), "{err}");
    // The same layer twice, the second a link to the first: fine.
    archive(
        &s.work("a4.tar"),
        &[
            ("l1", Member::Dir),
            ("manifest.json", Member::File(MANIFEST)),
            ("config.json", Member::File(&two)),
            ("l1/layer.tar", Member::File(&layer)),
            ("l2/layer.tar", Member::Symlink("../l1/layer.tar")),
        ],
    );
    let (ok, err) = convert("a4.tar");
    assert!(ok, "{err}");
    assert_eq!(s.outside(), before, "the sentinel tree changed");
}

/// As an ordinary user, extract gives the caller's own files, as tar does: no
/// chown (which would fail), setuid and setgid bits cleared, device nodes
/// left out with a warning.
#[test]
fn extract_as_an_ordinary_user_keeps_what_it_may() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Sentinel::new();
    // The user must reach the image and the binary, and write the output.
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.work(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut r = Raw::new();
    let mut suid = r.file("bin/su", b"#!/bin/true\n");
    suid.mode = 0o4755;
    // Only root may set a file capability; an ordinary user's extract leaves it.
    suid.xattrs.insert(
        "security.capability".into(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let mut root_only = r.file("etc/shadow", b"root:*:1::::::\n");
    root_only.mode = 0o640;
    root_only.gid = 42;
    let img = s.work("user.cdimg");
    r.write(
        &img,
        None,
        vec![],
        vec![
            entry("bin", Kind::Dir),
            suid,
            entry("dev", Kind::Dir),
            device("dev/sda"),
            entry("etc", Kind::Dir),
            root_only,
        ],
    );
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.work("user-out");
    let run = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(d4c())
        .args([
            "extract",
            &img.to_string_lossy(),
            "-o",
            &out.to_string_lossy(),
        ])
        .env("D4C_HOME", s.work("user-home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("setuid and setgid bits cleared"), "{err}");
    assert!(err.contains("1 device node(s) left out"), "{err}");
    let m = std::fs::metadata(out.join("bin/su")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 65534));
    assert!(err.contains("only user.* xattrs"), "{err}");
    let m = std::fs::metadata(out.join("etc/shadow")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, 65534));
    assert!(!out.join("dev/sda").exists());
}

/// A few KB of header that decompress to 100 MB of JSON: refused before it is
/// parsed (it would cost the parser's memory many times over).
#[test]
fn a_header_bomb_is_refused_before_parsing() {
    let s = Sentinel::new();
    let mut r = Raw::new();
    r.config = "a".repeat(100 << 20);
    let img = s.work("bomb.cdimg");
    r.write(&img, None, vec![], vec![]);
    assert!(std::fs::metadata(&img).unwrap().len() < 64 << 10);
    s.refuses(&["inspect", &img.to_string_lossy()], "decompressed");
}
