//! Push and pull through a real OCI registry (docker-registry 2.8, started by
//! scripts/services) and through `d4c serve`: only the planned bytes move, codecs
//! are negotiated and fetched by digest, interrupted downloads resume, tampered
//! blobs are rejected, and TLS with basic auth works against a registry the test
//! starts itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use d4c_tests::series::Series;
use d4c_tests::{components, run_d4c, sh};
use serde_json::Value;

const D4C: &str = env!("CARGO_BIN_EXE_d4c");

fn registry() -> String {
    std::env::var("D4C_TEST_REGISTRY").expect(
        "D4C_TEST_REGISTRY is not set: run the tests with scripts/test, which starts the registry",
    )
}

/// A client machine: its own D4C_HOME (codec store, downloads).
struct Client {
    home: PathBuf,
}

impl Client {
    fn new(s: &Series, name: &str) -> Client {
        let home = s.dir.join(format!("client-{name}"));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        Client { home }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        run_d4c(Path::new(D4C), &self.home, args)
    }

    /// Nothing waits in the download directory.
    fn assert_no_downloads(&self) {
        let left: Vec<_> = std::fs::read_dir(self.home.join("downloads"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn pull(&self, args: &[&str]) -> Value {
        let mut a = vec!["pull", "--json"];
        a.extend_from_slice(args);
        let (ok, out, err) = self.run(&a);
        assert!(ok, "d4c {a:?} failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    fn pull_fails(&self, args: &[&str]) -> String {
        let mut a = vec!["pull"];
        a.extend_from_slice(args);
        let (ok, out, err) = self.run(&a);
        assert!(!ok, "d4c {a:?} should fail: {out}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }
}

fn size(s: &Series, name: &str) -> u64 {
    std::fs::metadata(s.dir.join(name)).unwrap().len()
}

fn sha256(path: &Path) -> String {
    d4c_host::digest::of_file(path).unwrap().0.hex()
}

/// A file's digest as `--json` output writes digests, `sha256:<hex>`.
fn oci(path: &Path) -> String {
    d4c_host::digest::of_file(path).unwrap().0.oci()
}

fn blobs(report: &Value) -> Vec<String> {
    report["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["blob"].as_str().unwrap().to_string())
        .collect()
}

/// Bytes a report's path moves: each step's compact form where it has one.
fn transfer(report: &Value) -> u64 {
    report["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["compact"]["size"]
                .as_u64()
                .unwrap_or_else(|| s["size"].as_u64().unwrap())
        })
        .sum()
}

fn image_id(s: &Series, name: &str) -> String {
    s.inspect(name)["image_id"].as_str().unwrap().to_string()
}

fn push(s: &Series, file: &str, reference: &str) {
    s.ok(&["push", &s.p(file), reference]);
}

/// A unique repository per test run, so tests and reruns do not see each other's tags.
fn repo(name: &str) -> String {
    format!("{}/d4c-test/{name}-{}", registry(), std::process::id())
}

#[test]
fn pull_moves_only_the_delta_bytes() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "registry-bytes");
    add_v4(&s);
    let r = repo("bytes");
    push(&s, "v1.cdimg", &format!("{r}:v1"));
    push(&s, "d12.cdimg", &format!("{r}:v2"));
    push(&s, "d23.cdimg", &format!("{r}:v3"));
    push(&s, "d34.cdimg", &format!("{r}:v4"));
    push(&s, "v4.cdimg", &format!("{r}:v4-full"));
    // Pushing again sends nothing new.
    let again: Value =
        serde_json::from_str(&s.ok(&["push", &s.p("d12.cdimg"), &format!("{r}:v2"), "--json"]))
            .unwrap();
    assert_eq!(again["uploaded"], false);
    // Each codec is an object saying whether its blob went: none did again.
    let codecs = again["codecs"].as_array().unwrap();
    assert!(!codecs.is_empty(), "{again}");
    for c in codecs {
        assert!(c["name"].is_string() && c["digest"].is_string(), "{c}");
        assert_eq!(c["uploaded"], false, "{c}");
    }

    let c = Client::new(&s, "bytes");
    let tag = format!("{r}:v4");
    // The plan: the three deltas, nothing else, each in its compact form (the
    // registry held each one's base when it was pushed); a dry run moves nothing.
    let plan = c.pull(&["--dry-run", &tag, "--have", &s.p("v1.cdimg")]);
    let chain = ["d12.cdimg", "d23.cdimg", "d34.cdimg"];
    let want: Vec<String> = chain.iter().map(|d| oci(&s.dir.join(d))).collect();
    assert_eq!(blobs(&plan), want);
    for (step, d) in plan["path"].as_array().unwrap().iter().zip(chain) {
        assert!(
            step["compact"]["size"].as_u64().unwrap() < size(&s, d),
            "{step}"
        );
    }
    let deltas = transfer(&plan);
    assert!(deltas < size(&s, "v4.cdimg"));
    assert_eq!(plan["bytes_planned"], deltas);
    assert_eq!(plan["bytes_transferred"], 0);

    // Holding v1: exactly those bytes cross the wire; the deltas are rebuilt
    // from their compact forms and merged locally into one delta v1 -> v4.
    let out = s.p("pulled-d14.cdimg");
    let rep = c.pull(&[&tag, "--have", &s.p("v1.cdimg"), "-o", &out]);
    assert_eq!(rep["bytes_transferred"], deltas);
    assert_eq!(rep["compact_steps"], 3);
    assert_eq!(rep["output"], "delta");
    assert_eq!(rep["start"].as_str().unwrap(), image_id(&s, "v1.cdimg"));
    assert_eq!(image_id(&s, "pulled-d14.cdimg"), image_id(&s, "v4.cdimg"));
    s.patch("v1.cdimg", &["pulled-d14.cdimg"], "p4.cdimg");
    s.same_image("p4.cdimg", "v4.cdimg");

    // Holding v1 and v3: the shorter way, from v3; the one delta rebuilt exactly.
    let rep = c.pull(&[
        &tag,
        "--have",
        &s.p("v1.cdimg"),
        "--have",
        &s.p("v3.cdimg"),
        "-o",
        &s.p("pulled-d34.cdimg"),
    ]);
    assert_eq!(rep["bytes_transferred"], transfer(&rep));
    assert_eq!(rep["start"].as_str().unwrap(), image_id(&s, "v3.cdimg"));
    assert_eq!(
        sha256(&s.dir.join("pulled-d34.cdimg")),
        sha256(&s.dir.join("d34.cdimg"))
    );
    // Holding nothing: the cheapest way is the full v1 and the three deltas
    // (v4 stores its changed /opt copy of libcrypto apart, so its full image is
    // larger), patched into the full v4.
    let via_v1 = size(&s, "v1.cdimg") + deltas;
    assert!(via_v1 < size(&s, "v4.cdimg"));
    let rep = c.pull(&[&tag, "-o", &s.p("pulled-v4.cdimg")]);
    assert_eq!(rep["bytes_transferred"], via_v1);
    assert_eq!(rep["path"].as_array().unwrap().len(), 4);
    assert_eq!(rep["path"][0]["kind"], "image");
    assert_eq!(rep["output"], "image");
    s.same_image("pulled-v4.cdimg", "v4.cdimg");
    // --full from a held image: deltas, patched into the full image.
    let rep = c.pull(&[
        &tag,
        "--have",
        &s.p("v2.cdimg"),
        "--full",
        "-o",
        &s.p("pulled-full.cdimg"),
    ]);
    assert_eq!(rep["path"].as_array().unwrap().len(), 2);
    assert_eq!(rep["bytes_transferred"], transfer(&rep));
    assert_eq!(rep["output"], "image");
    s.same_image("pulled-full.cdimg", "v4.cdimg");
    // Holding the target: nothing moves.
    let rep = c.pull(&[&tag, "--have", &s.p("v4.cdimg"), "-o", &s.p("same.cdimg")]);
    assert_eq!(rep["bytes_transferred"], 0);
    s.same_image("same.cdimg", "v4.cdimg");
    // Downloads do not pile up.
    c.assert_no_downloads();
}

/// A fourth version of the series: v3 with its version file changed and a
/// library rewritten in place (umoci repack), converted, and the delta v3 -> v4.
fn add_v4(s: &Series) {
    let bundle = s.dir.join("bundle-v4");
    let oci = s.p("oci");
    sh(Command::new("umoci")
        .args(["unpack", "--image", &format!("{oci}:v3")])
        .arg(&bundle))
    .unwrap();
    let root = bundle.join("rootfs");
    std::fs::write(root.join("etc/app-version"), "v4\n").unwrap();
    let lib = std::fs::read_dir(root.join("opt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("an app directory in /opt");
    let lib = std::fs::read_dir(&lib)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&lib).unwrap();
    let mid = data.len() / 2;
    data[mid..mid + 16].copy_from_slice(b"d4c-series-v4...");
    std::fs::write(&lib, data).unwrap();
    sh(Command::new("umoci")
        .args(["repack", "--image", &format!("{oci}:v4")])
        .arg(&bundle))
    .unwrap();
    s.ok(&[
        "convert",
        &format!("{oci}:v4"),
        "-o",
        &s.p("v4.cdimg"),
        "--level",
        "3",
    ]);
    s.ok(&[
        "diff",
        "--old",
        &s.p("v3.cdimg"),
        "--new",
        &s.p("v4.cdimg"),
        "-o",
        &s.p("d34.cdimg"),
    ]);
}

#[test]
fn codecs_are_negotiated_and_fetched_by_digest() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "registry-codecs");
    std::fs::write(s.dir.join("template.wasm"), components::TEMPLATE).unwrap();
    let template = sha256(&s.dir.join("template.wasm"));
    for (codec, out) in [("bsdiff", "d13b"), ("zstd-dict", "d13z")] {
        s.ok(&[
            "diff",
            "--old",
            &s.p("v1.cdimg"),
            "--new",
            &s.p("v3.cdimg"),
            "--codec",
            codec,
            "-o",
            &s.p(&format!("{out}.cdimg")),
        ]);
    }
    s.ok(&[
        "diff",
        "--old",
        &s.p("v1.cdimg"),
        "--new",
        &s.p("v3.cdimg"),
        "--codec",
        &s.p("template.wasm"),
        "-o",
        &s.p("d13t.cdimg"),
    ]);
    let bsdiff = s.inspect("d13b.cdimg")["codecs"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    // Repository A: bsdiff and zstd-dict deltas and the full image.
    let a = repo("codecs-a");
    push(&s, "v1.cdimg", &format!("{a}:v1"));
    push(&s, "d13b.cdimg", &format!("{a}:v3"));
    push(&s, "d13z.cdimg", &format!("{a}:v3"));
    push(&s, "v3.cdimg", &format!("{a}:v3"));
    let c = Client::new(&s, "codecs");
    let have = s.p("v1.cdimg");
    // A client without bsdiff that may not fetch never receives a bsdiff delta.
    // (gzip made the layers' recipes, which every image and delta of this
    // series carries for export: the client needs it too.)
    let rep = c.pull(&[
        &format!("{a}:v3"),
        "--have",
        &have,
        "--codecs",
        "zstd-dict,gzip",
        "--no-fetch-codecs",
        "-o",
        &s.p("z.cdimg"),
    ]);
    let used: Vec<&Value> = rep["path"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["codecs"].as_array().unwrap())
        .collect();
    assert!(
        !used.iter().any(|c| c.as_str() == Some(bsdiff.as_str())),
        "{rep}"
    );
    assert!(rep["codecs_fetched"].as_array().unwrap().is_empty());
    let header = s.inspect("z.cdimg");
    assert!(
        header["codecs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["sha256"] != bsdiff.as_str()),
        "{header}"
    );
    assert_eq!(image_id(&s, "z.cdimg"), image_id(&s, "v3.cdimg"));
    // Holding only the recipes' codec and fetching none: only the full image
    // will do.
    let rep = c.pull(&[
        &format!("{a}:v3"),
        "--have",
        &have,
        "--codecs",
        "gzip",
        "--no-fetch-codecs",
        "--dry-run",
    ]);
    assert_eq!(rep["path"][0]["kind"], "image");

    // Repository B: only a delta in a third-party codec this client lacks.
    let b = repo("codecs-b");
    push(&s, "d13t.cdimg", &format!("{b}:v3"));
    let err = c.pull_fails(&[
        &format!("{b}:v3"),
        "--have",
        &have,
        "--no-fetch-codecs",
        "-o",
        &s.p("t.cdimg"),
    ]);
    assert!(
        err.contains("needs codecs you lack") && err.contains("template"),
        "{err}"
    );
    assert!(!s.dir.join("t.cdimg").exists());
    let stored = c.home.join("codecs").join(format!("{template}.wasm"));
    assert!(!stored.exists());
    // Accepting codec fetch: the component comes by digest, is checked, stored and used.
    let rep = c.pull(&[&format!("{b}:v3"), "--have", &have, "-o", &s.p("t.cdimg")]);
    assert_eq!(
        rep["codecs_fetched"][0]["digest"],
        format!("sha256:{template}")
    );
    assert_eq!(
        rep["bytes_transferred"],
        size(&s, "d13t.cdimg") + components::TEMPLATE.len() as u64
    );
    assert_eq!(sha256(&stored), template);
    let (ok, _, err) = c.run(&[
        "patch",
        "--base",
        &have,
        "--delta",
        &s.p("t.cdimg"),
        "-o",
        &s.p("t-full.cdimg"),
    ]);
    assert!(ok, "{err}");
    s.same_image("t-full.cdimg", "v3.cdimg");
}

/// Where the test registry keeps a blob.
fn registry_blob(digest: &str) -> PathBuf {
    let data = std::env::var("D4C_TEST_REGISTRY_DATA")
        .expect("D4C_TEST_REGISTRY_DATA (scripts/services env)");
    Path::new(&data).join(format!(
        "docker/registry/v2/blobs/sha256/{}/{digest}/data",
        &digest[..2]
    ))
}

#[test]
fn a_killed_pull_resumes() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "registry-resume");
    // A blob no other test pushes (level 7), so the registry holds it for this test only.
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("d12.cdimg"),
        &s.p("d23.cdimg"),
        "--level",
        "7",
        "-o",
        &s.p("v3-7.cdimg"),
    ]);
    let r = repo("resume");
    push(&s, "v3-7.cdimg", &format!("{r}:v3"));
    let total = size(&s, "v3-7.cdimg");
    let digest = sha256(&s.dir.join("v3-7.cdimg"));
    let c = Client::new(&s, "resume");
    let out = s.dir.join("r.cdimg");
    let partial = c.home.join("downloads").join(format!("{digest}.partial"));

    // Slow the first pull down and kill it -9 midway.
    let mut child = Command::new(D4C)
        .args(["pull", &format!("{r}:v3"), "--limit-rate", "1M", "-o"])
        .arg(&out)
        .env("D4C_HOME", &c.home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let got = loop {
        let n = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if n >= total / 4 {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the download did not start"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed pull left its output");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= got && kept < total, "{kept} of {total}");

    // Again: only the rest moves, and the image is right.
    let rep = c.pull(&[&format!("{r}:v3"), "-o", out.to_str().unwrap()]);
    assert_eq!(rep["bytes_transferred"], total - kept);
    assert_eq!(sha256(&out), digest);
    assert!(!partial.exists());
    s.same_image("r.cdimg", "v3.cdimg");
}

#[test]
fn a_tampered_blob_is_rejected() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "registry-tamper");
    // Blobs unique to this test (level 9), since the registry shares blobs between repositories.
    s.ok(&[
        "patch",
        "--base",
        &s.p("v1.cdimg"),
        "--delta",
        &s.p("d12.cdimg"),
        "--level",
        "9",
        "-o",
        &s.p("v2-9.cdimg"),
    ]);
    s.ok(&[
        "diff",
        "--old",
        &s.p("v2-9.cdimg"),
        "--new",
        &s.p("v3.cdimg"),
        "-o",
        &s.p("d23-9.cdimg"),
    ]);
    let r = repo("tamper");
    push(&s, "v2-9.cdimg", &format!("{r}:v2"));
    push(&s, "d23-9.cdimg", &format!("{r}:v3"));
    let digest = sha256(&s.dir.join("d23-9.cdimg"));
    let c = Client::new(&s, "tamper");
    // Both forms of the delta are tampered with: the compact one fails its digest,
    // the client falls back to the plain one, which fails too.
    let plan = c.pull(&[
        "--dry-run",
        &format!("{r}:v3"),
        "--have",
        &s.p("v2-9.cdimg"),
    ]);
    let compact = plan["path"][0]["compact"]["blob"]
        .as_str()
        .expect("a compact form")
        .trim_start_matches("sha256:")
        .to_string();
    for d in [&digest, &compact] {
        let blob = registry_blob(d);
        let mut data = std::fs::read(&blob).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        std::fs::write(&blob, &data).unwrap();
    }

    let out = s.dir.join("t.cdimg");
    let err = c.pull_fails(&[
        &format!("{r}:v3"),
        "--have",
        &s.p("v2-9.cdimg"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains(&digest) && err.contains("tampered"), "{err}");
    assert!(!out.exists());
    // Nothing of the bad blob is kept for a resume to build on.
    c.assert_no_downloads();
}

#[test]
fn clear_errors() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    let s = Series::build(Path::new(D4C), "registry-errors");
    let r = repo("errors");
    push(&s, "v1.cdimg", &format!("{r}:v1"));
    let c = Client::new(&s, "errors");
    let o = s.p("x.cdimg");
    let err = c.pull_fails(&[&format!("{r}:nope"), "-o", &o]);
    assert!(err.contains("tag \"nope\" not found"), "{err}");
    let err = c.pull_fails(&["127.0.0.1:1/x/y:v1", "-o", &o]);
    assert!(err.contains("cannot reach registry 127.0.0.1:1"), "{err}");
    let err = c.pull_fails(&[
        &format!(
            "{}/d4c-test/never-pushed-{}:v1",
            registry(),
            std::process::id()
        ),
        "-o",
        &o,
    ]);
    assert!(err.contains("not found"), "{err}");
    // A plain OCI image with nothing attached (cli/tests/attach.rs attaches).
    let plain = format!("{}/d4c-test/plain-{}:v1", registry(), std::process::id());
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", s.p("oci")))
        .arg(format!("docker://{plain}")))
    .unwrap();
    let err = c.pull_fails(&[&plain, "-o", &o]);
    assert!(
        err.contains("is an ordinary image with no d4c artifacts attached"),
        "{err}"
    );
    let err = c.pull_fails(&[&format!("{r}:v1"), "--have", &s.p("d12.cdimg"), "-o", &o]);
    assert!(err.contains("--have takes full images"), "{err}");
    let (ok, _, err) = c.run(&["push", &s.p("v1.cdimg"), "127.0.0.1:1/x:v1"]);
    assert!(!ok && err.contains("cannot reach registry"), "{err}");
    assert!(!s.dir.join("x.cdimg").exists());
}

/// `d4c serve` on a free port, its metrics on another, stopped on drop.
struct Server {
    child: Child,
    url: String,
    metrics: u16,
}

impl Server {
    fn start(store: &Path, home: &Path) -> Server {
        let metrics = d4c_tests::free_port();
        let (child, url) = d4c_tests::start_serve(
            Command::new(D4C)
                .args(["serve", "--listen", "127.0.0.1:0", "--store"])
                .arg(store)
                .arg("--metrics-listen")
                .arg(format!("127.0.0.1:{metrics}"))
                .env("D4C_HOME", home)
                .stderr(std::fs::File::create(store.with_extension("log")).unwrap()),
        );
        Server {
            child,
            url,
            metrics,
        }
    }

    /// A metric's value from its /metrics ([`d4c_tests::scrape_metric`]).
    fn metric(&self, name: &str, labels: &str) -> u64 {
        d4c_tests::scrape_metric(self.metrics, name, labels)
    }

    fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn update_server_merges_and_negotiates() {
    // Without origins: this series stacks a layer per version, so keeping
    // each version's original layers makes a merged v1→v3 carry v2's
    // replaced files too, and the server rightly sends two deltas instead.
    let s = Series::build_with(Path::new(D4C), "server", &["--no-origin"]);
    for (codec, old, new, out) in [
        ("bsdiff", "v1", "v2", "b12"),
        ("bsdiff", "v2", "v3", "b23"),
        ("zstd-dict", "v1", "v2", "z12"),
        ("zstd-dict", "v2", "v3", "z23"),
    ] {
        s.ok(&[
            "diff",
            "--old",
            &s.p(&format!("{old}.cdimg")),
            "--new",
            &s.p(&format!("{new}.cdimg")),
            "--codec",
            codec,
            "-o",
            &s.p(&format!("{out}.cdimg")),
        ]);
    }
    let bsdiff = s.inspect("b12.cdimg")["codecs"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let srv = Server::start(&s.dir.join("store"), &s.dir.join("server-home"));
    let r = format!("{}/app", srv.host());
    // bsdiff's deltas, which merge through the codec: `auto` gives this
    // series' libraries to elf-refs, whose aligned steps do not merge (they
    // are kept as two steps, CODECS.md) and would leave the codec merge untried.
    push(&s, "v1.cdimg", &format!("{r}:v1"));
    push(&s, "b12.cdimg", &format!("{r}:v2"));
    push(&s, "b23.cdimg", &format!("{r}:v3"));
    push(&s, "v3.cdimg", &format!("{r}:v3"));

    // Holding v1: the server merges b12 and b23 into one delta; only it moves.
    let c = Client::new(&s, "server");
    let have = s.p("v1.cdimg");
    let rep = c.pull(&[
        "--server",
        &srv.url,
        "app:v3",
        "--have",
        &have,
        "-o",
        &s.p("m.cdimg"),
    ]);
    assert_eq!(rep["merged_by_server"], 2);
    assert_eq!(rep["path"].as_array().unwrap().len(), 1);
    let merged = &rep["path"][0];
    let merged_blob = merged["blob"].as_str().unwrap().to_string();
    assert_eq!(
        merged["base_id"].as_str().unwrap(),
        image_id(&s, "v1.cdimg")
    );
    // It came in the compact encoding (its header against v1's tree): fewer
    // bytes than the merged delta, rebuilt into exactly that delta.
    assert_eq!(rep["compact_steps"], 1, "{rep}");
    assert_eq!(rep["bytes_transferred"], rep["bytes_planned"]);
    assert_eq!(rep["bytes_transferred"], transfer(&rep));
    assert!(rep["bytes_transferred"].as_u64().unwrap() < merged["size"].as_u64().unwrap());
    assert_eq!(merged["size"], size(&s, "m.cdimg"));
    assert_eq!(
        merged["blob"].as_str().unwrap(),
        oci(&s.dir.join("m.cdimg"))
    );
    assert!(size(&s, "m.cdimg") <= size(&s, "b12.cdimg") + size(&s, "b23.cdimg"));
    s.ok(&[
        "patch",
        "--base",
        &have,
        "--delta",
        &s.p("m.cdimg"),
        "-o",
        &s.p("m-full.cdimg"),
    ]);
    s.same_image("m-full.cdimg", "v3.cdimg");

    // Many clients at once get the same merged delta (made once, then cached).
    let outs: Vec<String> = (0..4).map(|i| s.p(&format!("m{i}.cdimg"))).collect();
    let handles: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let home = s.dir.join(format!("client-many-{i}"));
            let _ = std::fs::remove_dir_all(&home);
            std::fs::create_dir_all(&home).unwrap();
            let (url, have, o) = (srv.url.clone(), have.clone(), o.clone());
            std::thread::spawn(move || {
                run_d4c(
                    Path::new(D4C),
                    &home,
                    &[
                        "pull", "--server", &url, "app:v3", "--have", &have, "-o", &o,
                    ],
                )
            })
        })
        .collect();
    for h in handles {
        let (ok, _, err) = h.join().unwrap();
        assert!(ok, "{err}");
    }
    for o in &outs {
        assert_eq!(sha256(Path::new(o)), sha256(&s.dir.join("m.cdimg")));
    }

    // A second repository with bsdiff and zstd-dict deltas: a client without
    // bsdiff that does not fetch codecs never gets bsdiff content.
    let r2 = format!("{}/app2", srv.host());
    push(&s, "v1.cdimg", &format!("{r2}:v1"));
    for d in ["b12", "b23", "z12", "z23"] {
        push(&s, &format!("{d}.cdimg"), &format!("{r2}:latest"));
    }
    for (codecs, fetch) in [("zstd-dict", false), ("zstd-dict", true)] {
        let mut args = vec![
            "--server",
            srv.url.as_str(),
            "app2:latest",
            "--have",
            have.as_str(),
            "--codecs",
            codecs,
            "-o",
        ];
        let o = s.p(&format!("n-{fetch}.cdimg"));
        args.push(&o);
        if !fetch {
            args.push("--no-fetch-codecs");
        }
        let rep = c.pull(&args);
        let header = s.inspect(&format!("n-{fetch}.cdimg"));
        assert_eq!(
            header["image_id"].as_str().unwrap(),
            image_id(&s, "v3.cdimg")
        );
        if !fetch {
            assert!(
                header["codecs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["sha256"] != bsdiff.as_str()),
                "{header}"
            );
            assert!(rep["codecs_fetched"].as_array().unwrap().is_empty());
        }
    }
    // A compact blob that does not check out: the client falls back to the plain delta.
    // The server caches it under sha256("compact <delta> <base>").
    let key = d4c_host::digest::Digest::of(
        format!("compact {} {}", merged_blob, image_id(&s, "v1.cdimg")).as_bytes(),
    );
    let cached = s.dir.join(format!("store/merged/{}.json", key.hex()));
    let offer: Value = serde_json::from_slice(&std::fs::read(&cached).unwrap()).unwrap();
    let blob = s
        .dir
        .join("store/blobs/sha256")
        .join(offer["blob"].as_str().unwrap());
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::write(&blob, data).unwrap();
    let c2 = Client::new(&s, "server-fallback");
    let rep = c2.pull(&[
        "--server",
        &srv.url,
        "app:v3",
        "--have",
        &have,
        "-o",
        &s.p("fb.cdimg"),
    ]);
    assert_eq!(rep["compact_steps"], 0);
    assert!(
        rep["compact_fallback"]
            .as_str()
            .unwrap()
            .contains("tampered"),
        "{rep}"
    );
    assert_eq!(
        sha256(&s.dir.join("fb.cdimg")),
        sha256(&s.dir.join("m.cdimg"))
    );
    c2.assert_no_downloads();
    // The server logs one line per negotiation.
    let log = std::fs::read_to_string(s.dir.join("store.log")).unwrap();
    assert!(
        log.contains("pull app:v3 holding 1 image(s): 1 step(s)")
            && log.contains("(2 deltas merged)"),
        "{log}"
    );
    // The server says why it cannot serve a tag.
    let err = c.pull_fails(&["--server", &srv.url, "app:v9", "-o", &s.p("x.cdimg")]);
    assert!(err.contains("tag \"v9\" not found"), "{err}");
    let err = c.pull_fails(&[
        "--server",
        &srv.url,
        "app2:latest",
        "--codecs",
        "",
        "--no-fetch-codecs",
        "--have",
        &have,
        "-o",
        &s.p("x.cdimg"),
    ]);
    assert!(err.contains("needs codecs you lack"), "{err}");
    // HOST:PORT names the server as it names a registry (loopback: HTTP).
    let plan = c.pull(&[
        "--server",
        srv.host(),
        "app:v3",
        "--have",
        &have,
        "--dry-run",
    ]);
    assert_eq!(plan["target"], image_id(&s, "v3.cdimg"), "{plan}");
    // Its metrics count what it did.
    assert!(srv.metric("d4c_serve_requests_total", "route=\"pull\",code=\"200\"") >= 3);
    assert!(srv.metric("d4c_serve_requests_total", "code=\"404\"") >= 1);
    assert!(srv.metric("d4c_serve_pulls_total", "result=\"planned\"") >= 3);
    assert!(srv.metric("d4c_serve_merges_total", "result=\"made\"") >= 1);
    assert!(srv.metric("d4c_serve_merges_total", "result=\"reused\"") >= 1);
    assert!(srv.metric("d4c_serve_blob_bytes_sent_total", "") > 0);
    assert!(srv.metric("d4c_codec_calls_total", "op=\"merge\",result=\"ok\"") >= 1);
}

/// A test CA in `d` (`ca.pem`, `ca-key.pem`) and a server certificate for
/// 127.0.0.1 it signed (`cert.pem`, `key.pem`).
fn test_ca(d: &Path) {
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=d4c test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    );
    issue(
        d,
        "/CN=127.0.0.1",
        Some("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"),
        "key.pem",
        "cert.pem",
    );
}

/// A key (`key`) and a certificate for `subject` the test CA in `d` signed
/// (`cert`), X.509 v3 with the extensions `ext`, or v1 without any.
fn issue(d: &Path, subject: &str, ext: Option<&str>, key: &str, cert: &str) {
    let csr = format!("{cert}.csr");
    openssl(
        d,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key,
            "-out", &csr,
        ],
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        cert,
    ];
    let ext_file = format!("{cert}.cnf");
    if let Some(ext) = ext {
        std::fs::write(d.join(&ext_file), ext).unwrap();
        args.extend(["-extfile", &ext_file]);
    }
    openssl(d, &args);
}

fn openssl(d: &Path, args: &[&str]) {
    sh(Command::new("openssl").args(args).current_dir(d)).unwrap();
}

/// A second registry, with TLS and basic auth (htpasswd), that this test starts.
#[test]
fn tls_and_basic_auth() {
    let s = Series::build(Path::new(D4C), "registry-tls");
    let d = s.dir.join("tls");
    std::fs::create_dir_all(d.join("data")).unwrap();
    test_ca(&d);
    let htpasswd = sh(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"])).unwrap();
    std::fs::write(d.join("htpasswd"), htpasswd).unwrap();
    let port = d4c_tests::free_port();
    let _registry = private_registry(
        &d,
        port,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: d4c-test\n    path: {}\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display(),
            d.join("htpasswd").display()
        ),
    );

    // "https://" is implied for a non-loopback name; 127.0.0.1 needs it spelled.
    let r = format!("https://127.0.0.1:{port}/secure/app");
    let ca = d.join("ca.pem");
    let d4c = |args: &[&str], user: Option<(&str, &str)>, ca: Option<&Path>| {
        let mut cmd = Command::new(D4C);
        cmd.args(args)
            .env("D4C_HOME", &s.home)
            .env("HOME", &d)
            .env_remove("D4C_CA_CERT");
        cmd.env_remove("D4C_REGISTRY_USER")
            .env_remove("D4C_REGISTRY_PASSWORD");
        if let Some((u, p)) = user {
            cmd.env("D4C_REGISTRY_USER", u)
                .env("D4C_REGISTRY_PASSWORD", p);
        }
        if let Some(ca) = ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let push_args = [&s.p("v1.cdimg"), format!("{r}:v1").as_str()].map(str::to_string);
    let push_args: Vec<&str> = push_args.iter().map(String::as_str).collect();
    let mut push = vec!["push"];
    push.extend(&push_args);
    // Untrusted certificate, no credentials, wrong password: each a clear refusal.
    let (ok, err) = d4c(&push, Some(("alice", "s3cret")), None);
    assert!(!ok && err.contains("cannot reach registry"), "{err}");
    let (ok, err) = d4c(&push, None, Some(&ca));
    assert!(!ok && err.contains("requires a login"), "{err}");
    let (ok, err) = d4c(&push, Some(("alice", "wrong")), Some(&ca));
    assert!(!ok && err.contains("refused the login"), "{err}");
    let (ok, err) = d4c(&push, Some(("alice", "s3cret")), Some(&ca));
    assert!(ok, "{err}");
    // Credentials from a docker config file work too.
    let auth = base64_encode(b"alice:s3cret");
    std::fs::create_dir_all(d.join(".docker")).unwrap();
    std::fs::write(
        d.join(".docker/config.json"),
        format!(r#"{{"auths":{{"127.0.0.1:{port}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let out = s.p("tls-v1.cdimg");
    let (ok, err) = d4c(&["pull", &format!("{r}:v1"), "-o", &out], None, Some(&ca));
    assert!(ok, "{err}");
    s.same_image("tls-v1.cdimg", "v1.cdimg");

    // skopeo's flags: --creds, --authfile (the docker config gone), and
    // --tls-verify=false in place of the CA.
    std::fs::rename(d.join(".docker/config.json"), d.join("auth.json")).unwrap();
    let (tagged, o) = (format!("{r}:v1"), s.p("flags.cdimg"));
    let pull = |extra: &[&str], ca: Option<&Path>| {
        let _ = std::fs::remove_file(&o);
        let mut args = vec!["pull", tagged.as_str(), "-o", o.as_str()];
        args.extend_from_slice(extra);
        d4c(&args, None, ca)
    };
    let (ok, err) = pull(&[], Some(&ca));
    assert!(!ok && err.contains("requires a login"), "{err}");
    let (ok, err) = pull(&["--creds", "alice:s3cret"], Some(&ca));
    assert!(ok, "{err}");
    let (ok, err) = pull(&["--creds", "alice:wrong"], Some(&ca));
    assert!(!ok && err.contains("refused the login"), "{err}");
    let authfile = d.join("auth.json");
    let (ok, err) = pull(&["--authfile", authfile.to_str().unwrap()], Some(&ca));
    assert!(ok, "{err}");
    let (ok, err) = pull(&["--creds", "alice:s3cret"], None);
    assert!(!ok && err.contains("cannot reach registry"), "{err}");
    let (ok, err) = pull(&["--creds", "alice:s3cret", "--tls-verify=false"], None);
    assert!(ok, "{err}");
    s.same_image("flags.cdimg", "v1.cdimg");

    // A credential helper named by credHelpers (docker's protocol), as cloud
    // registries' logins are kept.
    use std::os::unix::fs::PermissionsExt;
    let helpers = d.join("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-d4ctest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\nif [ \"$1\" = get ] && [ \"$server\" = 127.0.0.1:{port} ]; then\n  \
             echo '{{\"ServerURL\":\"127.0.0.1:{port}\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join(".docker")).unwrap();
    std::fs::write(
        d.join(".docker/config.json"),
        format!(r#"{{"credHelpers":{{"127.0.0.1:{port}":"d4ctest"}}}}"#),
    )
    .unwrap();
    let path = format!("{}:{}", helpers.display(), std::env::var("PATH").unwrap());
    let out = Command::new(D4C)
        .args(["pull", &tagged, "-o", &o, "--ca-cert"])
        .arg(&ca)
        .env("D4C_HOME", &s.home)
        .env("HOME", &d)
        .env("PATH", path)
        .env_remove("D4C_REGISTRY_USER")
        .env_remove("D4C_REGISTRY_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry that takes only clients with a certificate its CA signed
/// (`http.tls.clientcas`): the CA and the client pair come from a certs.d
/// directory (`--cert-dir`), as docker and podman keep them.
#[test]
fn client_certificates_from_a_cert_dir() {
    let s = Series::build(Path::new(D4C), "registry-client-cert");
    let d = s.dir.join("mtls");
    std::fs::create_dir_all(d.join("data")).unwrap();
    test_ca(&d);
    issue(
        &d,
        "/CN=d4c client",
        None,
        "client-v1-key.pem",
        "client-v1.pem",
    );
    issue(
        &d,
        "/CN=d4c client",
        Some("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
        "client-key.pem",
        "client.pem",
    );
    let port = d4c_tests::free_port();
    let _registry = private_registry(
        &d,
        port,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display(),
            d.join("ca.pem").display()
        ),
    );
    let certs = d.join(format!("certs.d/127.0.0.1:{port}"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(d.join("ca.pem"), certs.join("ca.crt")).unwrap();
    let r = format!("https://127.0.0.1:{port}/mtls/app");
    let d4c = |args: &[&str]| {
        let out = Command::new(D4C)
            .args(args)
            .env("D4C_HOME", &s.home)
            .env_remove("D4C_CA_CERT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let v1 = s.p("v1.cdimg");
    let dir = certs.to_str().unwrap();
    let push = ["push", v1.as_str(), &format!("{r}:v1"), "--cert-dir", dir];
    // The CA alone: the registry refuses the handshake.
    let (ok, err) = d4c(&push);
    assert!(!ok && err.contains("cannot reach registry"), "{err}");
    std::fs::copy(d.join("client-v1.pem"), certs.join("client.cert")).unwrap();
    let (ok, err) = d4c(&push);
    assert!(
        !ok && err.contains("no matching") && err.lines().count() == 1,
        "a .cert without its .key: {err}"
    );
    std::fs::copy(d.join("client-v1-key.pem"), certs.join("client.key")).unwrap();
    // An X.509 v1 certificate (openssl's without extensions): refused in
    // one line before any connection.
    let (ok, err) = d4c(&push);
    assert!(
        !ok && err.contains("not a usable client certificate")
            && err.lines().count() == 1
            && !err.contains("panicked"),
        "{err}"
    );
    std::fs::copy(d.join("client.pem"), certs.join("client.cert")).unwrap();
    std::fs::copy(d.join("client-key.pem"), certs.join("client.key")).unwrap();
    let (ok, err) = d4c(&push);
    assert!(ok, "{err}");
    let out = s.p("mtls-v1.cdimg");
    let (ok, err) = d4c(&["pull", &format!("{r}:v1"), "-o", &out, "--cert-dir", dir]);
    assert!(ok, "{err}");
    s.same_image("mtls-v1.cdimg", "v1.cdimg");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A registry with token auth, and the token service beside it (this test's own:
/// it checks alice's password and signs RS256 JWTs with openssl, the signer's
/// certificate in `x5c` and in the registry's `rootcertbundle`).
#[test]
fn bearer_token_auth() {
    use base64::Engine;
    use std::io::{Read, Write};
    let s = Series::build(Path::new(D4C), "registry-token");
    let d = s.dir.join("token");
    std::fs::create_dir_all(d.join("data")).unwrap();
    sh(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=d4c test token signer",
            "-keyout",
            "sign-key.pem",
            "-out",
            "sign.pem",
        ])
        .current_dir(&d))
    .unwrap();
    let der = Command::new("openssl")
        .args(["x509", "-in", "sign.pem", "-outform", "DER"])
        .current_dir(&d)
        .output()
        .unwrap()
        .stdout;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (d, issued) = (d.clone(), issued.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                let want = format!(
                    "basic {}",
                    base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
                );
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l[14..].trim().eq_ignore_ascii_case(&want)
                });
                if !authorized {
                    let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                // scope=repository:NAME:ACTIONS (percent-encoded).
                let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let scope = target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(|v| {
                        v.replace("%3A", ":")
                            .replace("%2F", "/")
                            .replace("%2C", ",")
                    })
                    .unwrap_or_default();
                let parts: Vec<&str> = scope.splitn(3, ':').collect();
                let access = if parts.len() == 3 {
                    serde_json::json!([{"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}])
                } else {
                    serde_json::json!([])
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": "d4c-test-issuer", "sub": "alice", "aud": "d4c-test",
                    "exp": now + 600, "nbf": now - 60, "iat": now - 60,
                    "jti": format!("t{n}"), "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes())
                );
                let input = d.join(format!("jwt-{n}"));
                std::fs::write(&input, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-binary", "-sign", "sign-key.pem"])
                    .arg(&input)
                    .current_dir(&d)
                    .output()
                    .unwrap()
                    .stdout;
                let body = serde_json::json!({"token": format!("{signing_input}.{}", b64(&sig))})
                    .to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }

    let port = d4c_tests::free_port();
    let _registry = private_registry(
        &d,
        port,
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: d4c-test\n    issuer: d4c-test-issuer\n    rootcertbundle: {}\n",
            d.join("sign.pem").display()
        ),
    );

    let r = format!("127.0.0.1:{port}/secure/app");
    let d4c = |args: &[&str], user: Option<(&str, &str)>| {
        let mut cmd = Command::new(D4C);
        cmd.args(args).env("D4C_HOME", &s.home).env("HOME", &d);
        cmd.env_remove("D4C_REGISTRY_USER")
            .env_remove("D4C_REGISTRY_PASSWORD");
        if let Some((u, p)) = user {
            cmd.env("D4C_REGISTRY_USER", u)
                .env("D4C_REGISTRY_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let v1 = s.p("v1.cdimg");
    let (ok, err) = d4c(&["push", &v1, &format!("{r}:v1")], None);
    assert!(
        !ok && err.contains("token service") && err.contains("no credentials"),
        "{err}"
    );
    let (ok, err) = d4c(
        &["push", &v1, &format!("{r}:v1")],
        Some(("alice", "s3cret")),
    );
    assert!(ok, "{err}");
    let out = s.p("token-v1.cdimg");
    let (ok, err) = d4c(
        &["pull", &format!("{r}:v1"), "-o", &out],
        Some(("alice", "s3cret")),
    );
    assert!(ok, "{err}");
    s.same_image("token-v1.cdimg", "v1.cdimg");
    assert!(
        issued.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "no token was issued"
    );
}

/// A docker-registry of the test's own on 127.0.0.1:`port`, storing in
/// `dir/data`, with `extra` appended to its config (TLS, auth); killed on drop.
fn private_registry(dir: &Path, port: u16, extra: &str) -> KillOnDrop {
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: t\n{extra}",
        dir.join("data").display()
    );
    // `extra` follows http's own keys: indented lines (tls) extend http:,
    // unindented ones (auth) are top-level sections.
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the registry on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// Kills and reaps a child process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `d4c serve` facing a fleet: HTTPS (rustls) and htpasswd logins, traded for
/// bearer tokens (the default) or sent with every request (`--auth basic`);
/// anonymous reads only with `--anonymous-read`. Passwords never go over
/// plain HTTP off loopback: such a server refuses to start.
#[test]
fn serve_with_tls_and_logins() {
    let s = Series::build(Path::new(D4C), "serve-tls");
    let d = s.dir.join("serve-tls");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    test_ca(&d);
    let htpasswd = sh(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"])).unwrap();
    std::fs::write(d.join("htpasswd"), htpasswd).unwrap();
    let serve = |store: &str, extra: &[&str]| -> (Child, String) {
        d4c_tests::start_serve(
            Command::new(D4C)
                .args(["serve", "--listen", "127.0.0.1:0", "--store"])
                .arg(d.join(store))
                .arg("--htpasswd")
                .arg(d.join("htpasswd"))
                .arg("--tls-cert")
                .arg(d.join("cert.pem"))
                .arg("--tls-key")
                .arg(d.join("key.pem"))
                .args(extra)
                .env("D4C_HOME", d.join("server-home"))
                .stderr(std::fs::File::create(d.join(format!("{store}.log"))).unwrap()),
        )
    };
    let ca = d.join("ca.pem");
    let d4c = |args: &[&str], user: Option<(&str, &str)>, trust: bool| {
        let mut cmd = Command::new(D4C);
        cmd.args(args)
            .env("D4C_HOME", d.join("client-home"))
            .env("HOME", &d)
            .env_remove("D4C_REGISTRY_USER")
            .env_remove("D4C_REGISTRY_PASSWORD");
        if let Some((u, p)) = user {
            cmd.env("D4C_REGISTRY_USER", u)
                .env("D4C_REGISTRY_PASSWORD", p);
        }
        if trust {
            cmd.arg("--ca-cert").arg(&ca);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let alice = Some(("alice", "s3cret"));
    for (scheme, anonymous) in [("token", false), ("basic", true)] {
        let mut extra = vec!["--auth", scheme];
        if anonymous {
            extra.push("--anonymous-read");
        }
        let (mut child, url) = serve(&format!("store-{scheme}"), &extra);
        let r = format!("{url}/team/app");
        let v1 = s.p("v1.cdimg");
        let push = ["push", v1.as_str(), &format!("{r}:v1")];
        let (ok, err) = d4c(&push, alice, false);
        assert!(
            !ok && err.contains("cannot reach registry"),
            "{scheme}: {err}"
        );
        let (ok, err) = d4c(&push, None, true);
        assert!(!ok, "{scheme}: an anonymous push went through");
        assert!(
            err.contains("login") || err.contains("no credentials"),
            "{scheme}: {err}"
        );
        let (ok, err) = d4c(&push, Some(("alice", "wrong")), true);
        assert!(!ok, "{scheme}: a wrong password went through: {err}");
        let (ok, err) = d4c(&push, alice, true);
        assert!(ok, "{scheme}: {err}");
        let out = s.p(&format!("serve-{scheme}-v1.cdimg"));
        let pull = [
            "pull",
            "--server",
            url.as_str(),
            "team/app:v1",
            "-o",
            out.as_str(),
        ];
        let (ok, err) = d4c(&pull, None, true);
        assert_eq!(ok, anonymous, "{scheme}: anonymous pull: {err}");
        let (ok, err) = d4c(&pull, alice, true);
        assert!(ok, "{scheme}: {err}");
        s.same_image(&format!("serve-{scheme}-v1.cdimg"), "v1.cdimg");
        let _ = child.kill();
        let _ = child.wait();
    }
    // Logins over plain HTTP off loopback: refused at start.
    let out = Command::new(D4C)
        .args(["serve", "--listen", "0.0.0.0:0", "--store"])
        .arg(d.join("store-plain"))
        .arg("--htpasswd")
        .arg(d.join("htpasswd"))
        .env("D4C_HOME", d.join("server-home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in clear"), "{err}");
}

/// Pushes at the same moment into one repository, on docker-registry and on
/// `d4c serve`: every image stays findable (each push writes its own index
/// fragment, which no other push can overwrite).
#[test]
fn concurrent_pushes_keep_every_index_entry() {
    let Some(_) = d4c_tests::services::env("D4C_TEST_REGISTRY") else {
        return;
    };
    use d4c_tests::raw::Raw;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    const N: usize = 6;
    let images: Vec<PathBuf> = (0..N)
        .map(|i| {
            let p = dir.path().join(format!("i{i}.cdimg"));
            let mut r = Raw::new();
            let f = r.file("f", format!("image {i}\n").as_bytes());
            r.write(&p, None, vec![], vec![f]);
            p
        })
        .collect();
    let server = Server::start(&dir.path().join("store"), &dir.path().join("server-home"));
    let repo = format!("concurrent-{}", std::process::id());
    for host in [registry(), server.host().to_string()] {
        let children: Vec<Child> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                Command::new(D4C)
                    .arg("push")
                    .arg(img)
                    .arg(format!("{host}/{repo}:t{i}"))
                    .env("D4C_HOME", &home)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..N {
            let (ok, _, err) = run_d4c(
                Path::new(D4C),
                &home,
                &["pull", &format!("{host}/{repo}:t{i}"), "--dry-run"],
            );
            assert!(ok, "{host}: image {i} is not in the index: {err}");
        }
    }
}
