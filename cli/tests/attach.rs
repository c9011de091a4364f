//! One tag, both worlds, through a real registry (docker-registry 2.8, which
//! has no referrers API): images pushed by skopeo are converted straight from
//! the registry (the platform of a multi-platform index picked, never another),
//! cdimgs are attached to the ordinary image their tag names, the tag stays
//! that image for skopeo, and a d4c client holding v1 pulls v2 as the delta.

use std::path::Path;
use std::process::Command;

use d4c_host::registry::{Reference, Registry};
use d4c_tests::series::Series;
use d4c_tests::{run_d4c, sh};
use serde_json::Value;

const D4C: &str = env!("CARGO_BIN_EXE_d4c");

fn registry() -> String {
    std::env::var("D4C_TEST_REGISTRY").expect(
        "D4C_TEST_REGISTRY is not set: run the tests with scripts/test, which starts the registry",
    )
}

/// A repository of its own for this run: `v1`, `v2` pushed by skopeo from the
/// series' umoci layout; returns it and each tag's manifest digest.
fn ordinary_images(s: &Series, name: &str) -> (String, String, String) {
    let repo = format!("{}/d4c-test/{name}-{}", registry(), std::process::id());
    let layout = s.dir.join("oci");
    let mut digests = Vec::new();
    for tag in ["v1", "v2"] {
        sh(Command::new("skopeo").args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{repo}:{tag}"),
        ]))
        .unwrap();
        digests.push(manifest_digest(&format!("{repo}:{tag}")));
    }
    (repo, digests.remove(0), digests.remove(0))
}

/// The manifest digest skopeo reports for a tag.
fn manifest_digest(reference: &str) -> String {
    let out = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    d4c_host::digest::Digest::of(out.as_bytes()).oci()
}

fn inspect(s: &Series, name: &str) -> Value {
    s.inspect(name)
}

fn original_manifest(s: &Series, name: &str) -> String {
    inspect(s, name)["origin"]["manifest"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no origin in {}", inspect(s, name)))
        .to_string()
}

#[test]
fn convert_from_a_registry_picks_the_platform() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "attach-convert");
    let (repo, m1, m2) = ordinary_images(&s, "convert");

    // By tag and by digest: the same image as from the layout, provenance kept.
    s.ok(&[
        "convert",
        &format!("docker://{repo}:v1"),
        "-o",
        &s.p("r1.cdimg"),
        "--level",
        "3",
    ]);
    s.same_image("r1.cdimg", "v1.cdimg");
    assert_eq!(original_manifest(&s, "r1.cdimg"), m1);
    s.ok(&[
        "convert",
        &format!("docker://{repo}@{m2}"),
        "-o",
        &s.p("r2.cdimg"),
        "--level",
        "3",
    ]);
    assert_eq!(original_manifest(&s, "r2.cdimg"), m2);

    // A multi-platform index: v2 for this machine, v1 for arm64.
    let reg = Registry::connect(&Reference::parse(&repo).unwrap(), &Default::default()).unwrap();
    let entry = |digest: &str, arch: &str| {
        let (data, _) = reg.get_manifest(digest).unwrap().unwrap();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": data.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let host = d4c_host::image::builder::Platform::host().architecture;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&m1, "arm64"), entry(&m2, &host)],
    });
    let index = serde_json::to_vec(&index).unwrap();
    reg.put_manifest("multi", &index, "application/vnd.oci.image.index.v1+json")
        .unwrap();
    let multi = format!("docker://{repo}:multi");
    s.ok(&[
        "convert",
        &multi,
        "-o",
        &s.p("m-host.cdimg"),
        "--level",
        "3",
    ]);
    assert_eq!(original_manifest(&s, "m-host.cdimg"), m2);
    s.ok(&[
        "convert",
        &multi,
        "--platform",
        "linux/arm64",
        "-o",
        &s.p("m-arm.cdimg"),
        "--level",
        "3",
    ]);
    assert_eq!(original_manifest(&s, "m-arm.cdimg"), m1);
    let e = s.fails(&[
        "convert",
        &multi,
        "--platform",
        "linux/s390x",
        "-o",
        &s.p("x.cdimg"),
    ]);
    assert!(
        e.contains("no linux/s390x manifest") && e.contains("linux/arm64"),
        "{e}"
    );
    assert!(!s.dir.join("x.cdimg").exists());

    // What a registry cannot give is a clear error, and leaves nothing.
    let e = s.fails(&[
        "convert",
        &format!("docker://{repo}:nope"),
        "-o",
        &s.p("x.cdimg"),
    ]);
    assert!(e.contains("nope not found"), "{e}");
    let e = s.fails(&[
        "convert",
        &format!("docker://{repo}@sha256:{}", "0".repeat(64)),
        "-o",
        &s.p("x.cdimg"),
    ]);
    assert!(e.contains("not found"), "{e}");
    let e = s.fails(&["convert", "docker://not a reference", "-o", &s.p("x.cdimg")]);
    assert!(e.contains("invalid"), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n == "x.cdimg")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn attached_deltas_leave_the_tag_an_ordinary_image() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "attach-pull");
    let (repo, _, m2) = ordinary_images(&s, "attach");
    let v2 = format!("{repo}:v2");

    // Only to the image it was converted from.
    let e = s.fails(&["push", &s.p("v1.cdimg"), &v2, "--attach"]);
    assert!(
        e.contains("not the image this cdimg was converted from"),
        "{e}"
    );
    let out = s.ok(&["push", &s.p("v2.cdimg"), &v2, "--attach", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["subject"], m2.as_str());
    let fallback = format!("sha256-{}", &m2["sha256:".len()..]);
    assert_eq!(report["fallback_tag"], fallback.as_str());
    s.ok(&["push", &s.p("d12.cdimg"), &v2, "--attach"]);
    // Twice is harmless: the referrers list each artifact once.
    s.ok(&["push", &s.p("d12.cdimg"), &v2, "--attach"]);

    // The tag is still the ordinary image; its referrers are the fallback tag's.
    assert_eq!(manifest_digest(&v2), m2);
    let listed = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{repo}:{fallback}"),
    ]))
    .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let types: Vec<&str> = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    let cdimgs = types.iter().filter(|t| t.ends_with("cdimg.v1")).count();
    assert_eq!(cdimgs, 2, "{types:?}");
    let copy = s.dir.join("copied");
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{v2}"),
        &format!("oci:{}:v2", copy.display()),
    ]))
    .unwrap();

    // A client holding v1 downloads the delta only; the result is v2, its
    // original manifest included.
    let client = s.dir.join("client");
    let pull = |args: &[&str]| -> Value {
        let mut a = vec!["pull", "--json"];
        a.extend_from_slice(args);
        let (ok, out, err) = run_d4c(Path::new(D4C), &client, &a);
        assert!(ok, "d4c {a:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let r = pull(&[&v2, "--have", &s.p("v1.cdimg"), "-o", &s.p("got.cdimg")]);
    assert_eq!(r["subject"], m2.as_str());
    let d12 = std::fs::metadata(s.dir.join("d12.cdimg")).unwrap().len();
    assert_eq!(r["bytes_planned"].as_u64(), Some(d12), "{r}");
    assert!(r["bytes_transferred"].as_u64().unwrap() <= d12, "{r}");
    s.patch("v1.cdimg", &["got.cdimg"], "got-full.cdimg");
    s.same_image("got-full.cdimg", "v2.cdimg");
    assert_eq!(original_manifest(&s, "got-full.cdimg"), m2);
    // By digest too; with nothing held, the full image.
    let r = pull(&[&format!("{repo}@{m2}"), "-o", &s.p("full.cdimg")]);
    assert_eq!(r["output"], "image", "{r}");
    s.same_image("full.cdimg", "v2.cdimg");

    // A multi-platform tag listing v2 for this machine: attaching to it is
    // attaching to v2 (the index lists it), and a pull through it finds v2's.
    let reg = Registry::connect(&Reference::parse(&repo).unwrap(), &Default::default()).unwrap();
    let (v2_manifest, _) = reg.get_manifest(&m2).unwrap().unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m2, "size": v2_manifest.len(),
            "platform": {"os": "linux", "architecture": d4c_host::image::builder::Platform::host().architecture},
        }],
    });
    let index = serde_json::to_vec(&index).unwrap();
    reg.put_manifest("multi", &index, "application/vnd.oci.image.index.v1+json")
        .unwrap();
    s.ok(&[
        "push",
        &s.p("d12.cdimg"),
        &format!("{repo}:multi"),
        "--attach",
    ]);
    let r = pull(&[
        &format!("{repo}:multi"),
        "--have",
        &s.p("v1.cdimg"),
        "-o",
        &s.p("via-index.cdimg"),
    ]);
    assert_eq!(r["subject"], m2.as_str());
    assert_eq!(r["bytes_planned"].as_u64(), Some(d12), "{r}");
    let (ok, _, err) = run_d4c(
        Path::new(D4C),
        &client,
        &[
            "pull",
            &format!("{repo}:multi"),
            "--platform",
            "linux/s390x",
            "-o",
            &s.p("x.cdimg"),
        ],
    );
    assert!(!ok && err.contains("no linux/s390x manifest"), "{err}");

    // A tag without attachments says so.
    let (ok, _, err) = run_d4c(
        Path::new(D4C),
        &client,
        &["pull", &format!("{repo}:v1"), "-o", &s.p("x.cdimg")],
    );
    assert!(!ok && err.contains("no d4c artifacts attached"), "{err}");
}

/// A node whose d4c store (`d4c pull`) holds v1 and whose snapshotter shares
/// it (`shared_store`): kubelet's pull of v2 fetches only the delta, the
/// start's files copied from the store; without the store, the whole image.
#[test]
fn the_snapshotter_starts_from_the_shared_d4c_store() {
    use d4c_snapshotter::remote::{self, RemoteOptions, Target};
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "attach-shared");
    let (repo, _, m2) = ordinary_images(&s, "shared");
    s.ok(&["push", &s.p("v1.cdimg"), &format!("{repo}:v1"), "--attach"]);
    for f in ["v2.cdimg", "d12.cdimg"] {
        s.ok(&["push", &s.p(f), &format!("{repo}:v2"), "--attach"]);
    }
    let home = s.dir.join("node-d4c");
    let (ok, _, err) = run_d4c(Path::new(D4C), &home, &["pull", &format!("{repo}:v1")]);
    assert!(ok, "{err}");

    let target = Target {
        chain_id: "sha256:chain".into(),
        repository: Reference::parse(&repo).unwrap(),
        manifest: m2.parse().unwrap(),
        layer: m2.parse().unwrap(),
    };
    let codecs = d4c_tests::codecs_in(&s.dir.join("node-codecs"));
    let fetch = |shared: Option<std::path::PathBuf>, root: &str| {
        let blobs = d4c_host::image::store::Blobs::open(&s.dir.join(root)).unwrap();
        let opts = RemoteOptions {
            shared_store: shared,
            ..RemoteOptions::default()
        };
        let held = std::collections::BTreeMap::new();
        remote::fetch(&target, &held, &blobs, &codecs, &opts)
            .unwrap()
            .expect("artifacts attached")
    };
    let f = fetch(Some(home.join("images")), "node-shared");
    let v1_id = s.inspect("v1.cdimg")["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(f.start.map(|d| d.oci()), Some(v1_id));
    let d12 = std::fs::metadata(s.dir.join("d12.cdimg")).unwrap().len();
    assert_eq!(f.received, d12);
    assert_eq!(f.image.chain.len(), 1, "v1's file, copied in");
    assert_eq!(f.downloads.len(), 1, "the delta");
    let alone = fetch(None, "node-alone");
    assert_eq!(alone.start, None);
    assert!(alone.received > d12);
}
