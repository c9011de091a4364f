//! Provenance end to end: `convert` keeps the original image, `export` gives
//! it back down to its digests (directly converted, through a delta chain,
//! merged, patched), `verify` checks it and refuses a changed image, umoci's
//! pgzip layers come back bit for bit, and layers whose compressor no codec
//! reproduces are recompressed and reported.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use d4c_host::digest::Digest;
use d4c_host::image::entry::Data;
use d4c_host::image::format::{Reader, Writer};
use d4c_tests::{pax_record, run_d4c, write_layout_as, LayerFormat};
use serde_json::Value;
use tar::{EntryType, Header};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_d4c"))
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
    fn d4c(&self, args: &[&str]) -> (bool, String, String) {
        run_d4c(bin(), &self.dir.path().join("home"), args)
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.d4c(args);
        assert!(ok, "d4c {args:?} failed: {err}");
        out + &err
    }
}

/// A tar stream as a builder writes it, with what layers hold in the wild:
/// PAX headers, GNU long names, hardlinks, symlinks, whiteouts, empty files.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn entry(mut self, kind: EntryType, path: &str, data: &[u8], link: Option<&str>) -> Layer {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn file(self, path: &str, data: &[u8]) -> Layer {
        self.entry(EntryType::Regular, path, data, None)
    }
    fn pax(self, records: &[u8]) -> Layer {
        self.entry(EntryType::XHeader, "PaxHeaders/x", records, None)
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn text(seed: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "line {i} of {seed}: {}\n",
                (i as u32).wrapping_mul(seed) % 9973
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// v1: a base layer (GNU gzip -9), a layer that replaces and deletes files
/// (Python's gzip at 6), an application layer as docker writes it (Go's gzip
/// at its default level, 6), an uncompressed layer. v2: the same base, the second
/// and third layers changed a little, the last the same.
fn versions() -> [Vec<(Vec<u8>, LayerFormat)>; 2] {
    let long = format!("usr/share/{}/{}", "n".repeat(90), "m".repeat(120));
    let base = Layer::new()
        .entry(EntryType::Directory, "etc/", b"", None)
        .file("etc/os-release", b"NAME=d4c test\n")
        .file("etc/config", &text(3, 4000))
        .entry(EntryType::Link, "etc/config.hard", b"", Some("etc/config"))
        .entry(EntryType::Symlink, "etc/link", b"", Some("config"))
        .pax(&pax_record("SCHILY.xattr.user.note", b"kept\x00bytes"))
        .file("etc/with-xattr", b"x")
        .file(&long, &text(5, 100))
        .file("var/lib/gone", &text(7, 2000))
        .file("empty", b"")
        .done();
    let upper = |v: u32| {
        Layer::new()
            .file("etc/config", &text(3 + v, 4000))
            .file("var/lib/.wh.gone", b"")
            .file("opt/app/data", &text(11 * v, 3000))
            .done()
    };
    let app = |v: u32| {
        Layer::new()
            .file("srv/app/main.js", &text(13, 5000 + v as usize))
            .file("srv/app/static.bin", &text(17, 60_000))
            .done()
    };
    let last = Layer::new().file("opt/app/VERSION", b"2\n").done();
    [1, 2].map(|v| {
        vec![
            (base.clone(), LayerFormat::GnuGzip(9)),
            (upper(v), LayerFormat::PythonGzip(6)),
            (app(v), LayerFormat::GoGzip(6)),
            (last.clone(), LayerFormat::Tar),
        ]
    })
}

/// The manifest digest a layout's only image has, and its blobs.
fn layout_digests(dir: &str) -> (String, Vec<String>) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(Path::new(dir).join("index.json")).unwrap()).unwrap();
    let m = index["manifests"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut blobs: Vec<String> = std::fs::read_dir(Path::new(dir).join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    (m, blobs)
}

/// Two versions converted, diffed, and their original layouts.
struct Pair {
    env: Env,
}

fn pair() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| {
        let env = Env::new();
        for (i, layers) in versions().iter().enumerate() {
            let v = format!("v{}", i + 1);
            write_layout_as(Path::new(&env.p(&format!("oci-{v}"))), &v, layers).unwrap();
            env.ok(&[
                "convert",
                &format!("{}:{v}", env.p(&format!("oci-{v}"))),
                "-o",
                &env.p(&format!("{v}.cdimg")),
                "--level",
                "3",
            ]);
        }
        env.ok(&[
            "diff",
            "--old",
            &env.p("v1.cdimg"),
            "--new",
            &env.p("v2.cdimg"),
            "-o",
            &env.p("d12.cdimg"),
        ]);
        Pair { env }
    })
}

/// Exports `chain` into a fresh layout; asserts it is the original `v`
/// layout, blob for blob, and returns what d4c printed.
fn assert_exports_original(env: &Env, chain: &[&str], v: &str, out: &str) -> String {
    let mut args = vec!["export"];
    args.extend(chain);
    let target = env.p(out);
    args.extend(["-o", &target]);
    let printed = env.ok(&args);
    assert_eq!(
        layout_digests(&target),
        layout_digests(&env.p(&format!("oci-{v}"))),
        "{chain:?} exported is not the original {v}"
    );
    printed
}

#[test]
fn export_gives_back_the_original_image_converted_and_through_deltas() {
    let env = &pair().env;
    let (v1, v2, d12) = (env.p("v1.cdimg"), env.p("v2.cdimg"), env.p("d12.cdimg"));
    let printed = assert_exports_original(env, &[&v1], "v1", "e1");
    assert!(printed.contains("the original image"), "{printed}");
    assert_exports_original(env, &[&v2], "v2", "e2");
    assert_exports_original(env, &[&v1, &d12], "v2", "e12");
    // Patched to a full image, the origin (and its replaced files) stays.
    env.ok(&[
        "patch",
        "--base",
        &v1,
        "--delta",
        &d12,
        "-o",
        &env.p("p2.cdimg"),
    ]);
    assert_exports_original(env, &[&env.p("p2.cdimg")], "v2", "ep2");

    // inspect shows the original manifest and the config's diff_ids.
    let (manifest, _) = layout_digests(&env.p("oci-v2"));
    let j: Value = serde_json::from_str(&env.ok(&["inspect", &d12, "--json"])).unwrap();
    assert_eq!(j["origin"]["manifest"], manifest.as_str());
    let layers = j["origin"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert!(layers
        .iter()
        .all(|l| l["recipe"] == true || l["media_type"].as_str().unwrap().ends_with(".tar")));
}

#[test]
fn a_merged_delta_keeps_the_origin() {
    let env = &pair().env;
    // v2 → v3 (the last layer changes), merged with v1 → v2.
    let [_, mut v3] = versions();
    v3[3].0 = Layer::new().file("opt/app/VERSION", b"3\n").done();
    write_layout_as(Path::new(&env.p("oci-v3")), "v3", &v3).unwrap();
    env.ok(&[
        "convert",
        &format!("{}:v3", env.p("oci-v3")),
        "-o",
        &env.p("v3.cdimg"),
        "--level",
        "3",
    ]);
    env.ok(&[
        "diff",
        "--old",
        &env.p("v2.cdimg"),
        "--new",
        &env.p("v3.cdimg"),
        "-o",
        &env.p("d23.cdimg"),
    ]);
    env.ok(&[
        "merge",
        "--lower",
        &env.p("d12.cdimg"),
        "--upper",
        &env.p("d23.cdimg"),
        "-o",
        &env.p("d13.cdimg"),
    ]);
    assert_exports_original(env, &[&env.p("v1.cdimg"), &env.p("d13.cdimg")], "v3", "e13");
    let (m3, _) = layout_digests(&env.p("oci-v3"));
    env.ok(&[
        "verify",
        &env.p("v1.cdimg"),
        &env.p("d13.cdimg"),
        "--manifest",
        &m3,
    ]);
}

#[test]
fn verify_passes_on_the_original_and_names_what_differs_otherwise() {
    let env = &pair().env;
    let (v1, d12) = (env.p("v1.cdimg"), env.p("d12.cdimg"));
    let (m2, _) = layout_digests(&env.p("oci-v2"));
    let out = env.ok(&["verify", &v1, &d12, "--manifest", &m2]);
    assert!(out.contains(&format!("verified: manifest {m2}")), "{out}");
    // The manifest file works as well as its digest.
    let manifest_file = format!("{}/blobs/sha256/{}", env.p("oci-v2"), &m2[7..]);
    env.ok(&["verify", &v1, &d12, "--manifest", &manifest_file]);
    // Another manifest: refused, naming both.
    let (m1, _) = layout_digests(&env.p("oci-v1"));
    let (ok, _, err) = env.d4c(&["verify", &v1, &d12, "--manifest", &m1]);
    assert!(!ok && err.contains(&m2) && err.contains(&m1), "{err}");
}

/// Writes a copy of `src` with the content of the first item named `path`
/// (or starting so) changed by one byte:
/// with `consistent`, the entry's digest and the image id follow (a well
/// formed image that is not the original); else only the stored bytes change.
fn tamper(src: &str, dst: &str, path: &str, consistent: bool) {
    tamper_by(src, dst, path, consistent, |c| c[0] ^= 1);
}

/// [`tamper`] with the change `edit` makes to the content.
fn tamper_by(src: &str, dst: &str, path: &str, consistent: bool, edit: impl Fn(&mut Vec<u8>)) {
    let r = Reader::open(Path::new(src)).unwrap();
    let mut h = r.header().clone();
    let mut w = Writer::create(Path::new(dst)).unwrap();
    let mut items: Vec<&mut d4c_host::image::entry::Entry> = h.entries.iter_mut().collect();
    items.extend(h.origin.as_mut().unwrap().content.iter_mut());
    let mut done = false;
    for e in items {
        let Some(Data::Full { .. }) = &e.data else {
            continue;
        };
        let mut content = r.full_content(e).unwrap();
        if !done && e.path.starts_with(path) {
            done = true;
            edit(&mut content);
            if consistent {
                e.digest = Some(Digest::of(&content));
            }
        }
        e.data = Some(w.content(&content, 3).unwrap());
    }
    if consistent {
        h.image_id = h.compute_id();
    }
    w.finish(&h).unwrap();
}

#[test]
fn verify_refuses_an_image_changed_by_one_byte() {
    let env = &pair().env;
    let v1 = env.p("v1.cdimg");
    // A consistent image with one file changed: the layer holding it no
    // longer rebuilds to its diff_id.
    tamper(&v1, &env.p("t1.cdimg"), "etc/os-release", true);
    let (ok, _, err) = env.d4c(&["verify", &env.p("t1.cdimg")]);
    assert!(
        !ok && err.contains("layer 1: the rebuilt tar stream") && err.contains("diff_id"),
        "{err}"
    );
    // A file a later layer deleted (kept by digest for the origin) changed
    // the same way: the records name content the image does not hold.
    tamper(&v1, &env.p("t4.cdimg"), "layers/0/files/", true);
    let (ok, _, err4) = env.d4c(&["verify", &env.p("t4.cdimg")]);
    assert!(!ok && err4.contains("is not in the image"), "{err4}");
    // The stored bytes changed under an unchanged digest: the content check.
    tamper(&v1, &env.p("t2.cdimg"), "etc/os-release", false);
    let (ok, _, err) = env.d4c(&["verify", &env.p("t2.cdimg")]);
    assert!(
        !ok && err.contains("etc/os-release") && err.contains("sha256"),
        "{err}"
    );
    // Stored bytes one longer than the entry says (a file over 1 MiB, which
    // streams), the first ones intact: the stream is hashed with one byte
    // past each file's size, so it shows, and the rerun names the file.
    tamper_by(&v1, &env.p("t5.cdimg"), "srv/app/static.bin", false, |c| {
        c.push(b'x')
    });
    let (ok, _, err5) = env.d4c(&["verify", &env.p("t5.cdimg")]);
    assert!(
        !ok && err5.contains("srv/app/static.bin") && err5.contains("longer"),
        "{err5}"
    );
    // Nothing changed: it passes (the tamper helper itself is not the cause).
    tamper(&v1, &env.p("t3.cdimg"), "no/such/file", true);
    env.ok(&["verify", &env.p("t3.cdimg")]);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn umoci_pgzip_layers_export_bit_for_bit() {
    // umoci writes layers with klauspost/pgzip (256 KiB blocks): the gzip
    // codec's pgzip port makes their recipes.
    let dir = d4c_tests::data_dir().join("provenance-umoci");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let layout = d4c_tests::ssl_series(&dir);
    let env = Env::new();
    let img = env.p("v1.cdimg");
    let out = env.ok(&[
        "convert",
        &format!("{}:v1", layout.display()),
        "-o",
        &img,
        "--level",
        "3",
    ]);
    assert!(!out.contains("recompressed"), "{out}");
    let target = env.p("e");
    let out = env.ok(&["export", &img, "-o", &format!("{target}:v1")]);
    assert!(out.contains("the original image"), "{out}");
    let original = d4c_tests::tagged_manifest(&layout, "v1");
    let (exported, blobs) = layout_digests(&target);
    assert_eq!(exported, original);
    // Every exported blob (layers, config, manifest) is one of the original's.
    for b in blobs {
        assert!(
            layout.join("blobs/sha256").join(&b).exists(),
            "{b} is not the original's"
        );
    }
    env.ok(&["verify", &img, "--manifest", &original]);
}

#[test]
fn unreproducible_layers_are_recompressed_with_the_original_config_and_diff_ids() {
    let env = Env::new();
    let [mut layers, _] = versions();
    layers[1].1 = LayerFormat::SmallWindowGzip;
    let layout = PathBuf::from(env.p("oci"));
    write_layout_as(&layout, "v1", &layers).unwrap();
    let img = env.p("v1.cdimg");
    let source = format!("{}:v1", layout.display());
    let out = env.ok(&["convert", &source, "-o", &img, "--level", "3"]);
    assert!(out.contains("will be recompressed on export"), "{out}");
    let target = env.p("e");
    let out = env.ok(&["export", &img, "-o", &target]);
    assert!(
        out.contains("recompressed (gzip level 6)") && out.contains("instead of the original"),
        "{out}"
    );
    // Config and diff_ids are the original's: the tar streams are.
    let config_of = |dir: &Path, manifest: &str| -> String {
        let m: Value = serde_json::from_slice(
            &std::fs::read(dir.join("blobs/sha256").join(&manifest[7..])).unwrap(),
        )
        .unwrap();
        m["config"]["digest"].as_str().unwrap().to_string()
    };
    let original = d4c_tests::tagged_manifest(&layout, "v1");
    let (exported, _) = layout_digests(&target);
    assert_ne!(exported, original);
    assert_eq!(
        config_of(Path::new(&target), &exported),
        config_of(&layout, &original)
    );
    env.ok(&["verify", &img, "--manifest", &original]);
    // Converting the export again gives the same tree.
    let again = env.p("again.cdimg");
    env.ok(&["convert", &target, "-o", &again, "--level", "3"]);
    let tree_id = |p: &str| {
        let r = Reader::open(Path::new(p)).unwrap();
        d4c_host::image::entry::image_id(&r.header().entries, None)
    };
    assert_eq!(tree_id(&img), tree_id(&again));
}

#[test]
fn a_file_without_provenance_still_reads_and_exports_as_one_layer() {
    let env = Env::new();
    let dir = PathBuf::from(env.p("raw.cdimg"));
    let mut raw = d4c_tests::raw::Raw::new();
    let e = raw.file("hello", b"world\n");
    raw.write(&dir, None, vec![], vec![e]);
    assert_eq!(&std::fs::read(&dir).unwrap()[..8], b"D4CIMG01");
    let (ok, _, err) = env.d4c(&["verify", &env.p("raw.cdimg")]);
    assert!(!ok && err.contains("keeps no original"), "{err}");
    let out = env.ok(&["export", &env.p("raw.cdimg"), "-o", &env.p("e")]);
    assert!(out.contains("written as one layer"), "{out}");

    // `convert --no-origin` writes such a file: the tree alone.
    let p = pair();
    let plain = p.env.p("v1-plain.cdimg");
    let source = format!("{}:v1", p.env.p("oci-v1"));
    p.env.ok(&[
        "convert",
        &source,
        "-o",
        &plain,
        "--no-origin",
        "--level",
        "3",
    ]);
    assert_eq!(&std::fs::read(&plain).unwrap()[..8], b"D4CIMG01");
    let j: Value = serde_json::from_str(&p.env.ok(&["inspect", &plain, "--json"])).unwrap();
    assert!(j.get("origin").is_none(), "{j}");
    let tree = |f: &str| {
        let r = Reader::open(Path::new(f)).unwrap();
        d4c_host::image::entry::image_id(&r.header().entries, None)
    };
    assert_eq!(tree(&plain), tree(&p.env.p("v1.cdimg")));
}
