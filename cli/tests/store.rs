//! The local image store ($D4C_HOME/images) against a real registry
//! (docker-registry 2.8, started by scripts/services): `pull` updates it from
//! what it holds, `images` lists it, every command that takes cdimg files takes
//! a stored image's name, `rmi` removes names and the files no name uses.

use std::path::Path;

use d4c_tests::series::Series;
use d4c_tests::{run_d4c, services, tree_listing};
use serde_json::Value;

const D4C: &str = env!("CARGO_BIN_EXE_d4c");

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The stored images, by name.
fn images(s: &Series, home: &Path) -> Vec<Value> {
    let (ok, out, err) = run_d4c(&s.bin, home, &["images", "--json"]);
    assert!(ok, "{err}");
    json(&out).as_array().unwrap().clone()
}

fn chain_len(images: &[Value], name: &str) -> usize {
    let i = images
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {images:?}"));
    i["chain"].as_array().unwrap().len()
}

/// A client with a store of its own, pulling from one test repository.
struct Client {
    s: Series,
    home: std::path::PathBuf,
    /// `REGISTRY/REPO`.
    r: String,
}

impl Client {
    /// The series `name` built and its `pushes` (file, tag) pushed to a
    /// fresh repository; `None` without a registry.
    fn with(name: &str, extra: impl Fn(&Series), pushes: &[(&str, &str)]) -> Option<Client> {
        let registry = services::registry()?;
        let s = Series::build(Path::new(D4C), name);
        extra(&s);
        let r = format!("{registry}/d4c-test/{name}-{}", std::process::id());
        for (file, tag) in pushes {
            s.ok(&["push", &s.p(file), &format!("{r}:{tag}")]);
        }
        let home = s.dir.join("client");
        Some(Client { s, home, r })
    }

    /// Runs d4c, which must succeed; returns its stdout.
    fn d4c(&self, args: &[&str]) -> String {
        let (ok, out, err) = run_d4c(&self.s.bin, &self.home, args);
        assert!(ok, "d4c {args:?}: {err}");
        out
    }

    /// `d4c pull --json REGISTRY/REPO:tag` into the store.
    fn pull(&self, tag: &str) -> Value {
        json(&self.d4c(&["pull", "--json", &format!("{}:{tag}", self.r)]))
    }
}

#[test]
fn pull_into_the_store_and_use_its_names() {
    let pushes = [("v1.cdimg", "v1"), ("d12.cdimg", "v2"), ("d23.cdimg", "v3")];
    let Some(c) = Client::with("store", |_| {}, &pushes) else {
        return;
    };
    let (s, home, r) = (&c.s, &c.home, c.r.as_str());
    let repo = r.split_once('/').unwrap().1;
    let d4c = |args: &[&str]| c.d4c(args);
    let pull = |tag: &str| c.pull(tag);

    // v1 whole, then v2 and v3 as one delta each onto what the store holds.
    let v1 = pull("v1");
    assert_eq!(v1["stored_as"], format!("{r}:v1"));
    assert!(v1["start"].is_null());
    let v2 = pull("v2");
    assert_eq!(v2["start"], v1["target"]);
    let delta = std::fs::metadata(s.dir.join("d12.cdimg")).unwrap().len();
    assert!(v2["bytes_transferred"].as_u64().unwrap() <= delta, "{v2}");
    pull("v3");
    let listed = images(s, home);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (tag, len) in [("v1", 1), ("v2", 2), ("v3", 3)] {
        assert_eq!(chain_len(&listed, &format!("{r}:{tag}")), len, "{tag}");
    }
    // Digests in `sha256:` form, as in every --json output.
    assert!(
        v2["target"].as_str().unwrap().starts_with("sha256:"),
        "{v2}"
    );
    let inspect = |name: &str| json(&d4c(&["inspect", "--json", name]));
    assert_eq!(
        inspect(&format!("{repo}:v3"))["image_id"],
        s.inspect("v3.cdimg")["image_id"]
    );

    // A name works wherever files do: extract (the chain) ...
    let from_store = s.dir.join("rootfs-store");
    d4c(&[
        "extract",
        &format!("{r}:v3"),
        "-o",
        from_store.to_str().unwrap(),
    ]);
    let from_files = s.dir.join("rootfs-files");
    s.ok(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("d12.cdimg"),
        &s.p("d23.cdimg"),
        "-o",
        from_files.to_str().unwrap(),
    ]);
    assert_eq!(tree_listing(&from_store), tree_listing(&from_files));
    // ... and diff, which reads one full image: the chain becomes one file.
    let d = s.dir.join("d13.cdimg");
    let out = json(&d4c(&[
        "diff",
        "--json",
        "--old",
        &format!("{repo}:v1"),
        "--new",
        &format!("{repo}:v3"),
        "-o",
        d.to_str().unwrap(),
    ]));
    assert_eq!(out["image_id"], inspect(&format!("{repo}:v3"))["image_id"]);
    assert_eq!(chain_len(&images(s, home), &format!("{r}:v3")), 1);

    // A name's files stay while another name uses them.
    d4c(&["rmi", &format!("{r}:v1"), &format!("{repo}:v3")]);
    let listed = images(s, home);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        inspect(&format!("{r}:v2"))["image_id"],
        s.inspect("d12.cdimg")["image_id"]
    );
    let err = run_d4c(&s.bin, home, &["extract", "nothing:here", "-o", "/tmp/x"]).2;
    assert!(
        err.contains("no image of that name in the store") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Removing the last name leaves no file behind.
    d4c(&["rmi", &format!("{r}:v2")]);
    assert!(images(s, home).is_empty());
    let blobs = home.join("images/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".cdimg"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_chain_at_its_cap_is_updated_to_a_full_image() {
    let pushes = [
        ("v1.cdimg", "v1"),
        ("d12.cdimg", "v2"),
        ("d23.cdimg", "v3"),
        ("d32.cdimg", "back"),
        ("d23.cdimg", "fwd"),
    ];
    let d32 = |s: &Series| assert!(s.diff("v3.cdimg", "v2.cdimg", "d32.cdimg", &[]).0);
    let Some(c) = Client::with("store-cap", d32, &pushes) else {
        return;
    };
    let (s, home, r) = (&c.s, &c.home, c.r.as_str());
    let d4c = |args: &[&str]| c.d4c(args);
    let pull = |tag: &str| c.pull(tag);
    pull("v1");
    pull("v2");
    pull("v3");
    // Only v3 held (three files): `back` (v2 again) comes as the delta d32
    // onto it, a chain of four.
    d4c(&["rmi", &format!("{r}:v1"), &format!("{r}:v2")]);
    pull("back");
    assert_eq!(chain_len(&images(s, home), &format!("{r}:back")), 4);
    // Only `back` held: `fwd` (v3) starts from it but is stored whole.
    d4c(&["rmi", &format!("{r}:v3")]);
    let fwd = pull("fwd");
    assert_eq!(fwd["output"], "image", "{fwd}");
    assert!(fwd["start"].is_string(), "the delta was used: {fwd}");
    assert_eq!(chain_len(&images(s, home), &format!("{r}:fwd")), 1);
    assert_eq!(
        json(&d4c(&["inspect", "--json", &format!("{r}:fwd")]))["image_id"],
        s.inspect("v3.cdimg")["image_id"]
    );
}
