//! Kubernetes' path, end to end: containerd's CRI plugin (the second containerd
//! of scripts/services, with d4c-snapshotter as CRI's snapshotter) driven over
//! its gRPC API the way kubelet drives it, against the test registry holding
//! ordinary images pushed by skopeo with d4c artifacts attached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use d4c_tests::cri::{Cri, Pod};
use d4c_tests::series::Series;
use d4c_tests::{debian_versions, sh};

const D4C: &str = env!("CARGO_BIN_EXE_d4c");
const MANIFEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test, which starts the services")
    })
}

/// A node: the CRI containerd, and our snapshotter process serving it.
struct Node {
    cri: Cri,
    containerd: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
    snapshotter: Option<Child>,
    /// The port of the snapshotter's /metrics.
    metrics: u16,
}

impl Node {
    fn start() -> Node {
        let socket = PathBuf::from(env("D4C_CRI_SNAPSHOTTER_ADDRESS"));
        let dir = socket.parent().unwrap().to_path_buf();
        let containerd = PathBuf::from(env("D4C_CRI_ADDRESS"));
        let mut node = Node {
            cri: Cri::connect(&containerd).unwrap(),
            containerd,
            socket,
            // The snapshotter's state lives as long as containerd's.
            root: dir.join("root"),
            log: dir.join("snapshotter.log"),
            snapshotter: None,
            metrics: d4c_tests::free_port(),
        };
        node.start_snapshotter();
        node.cri.wait_ready(Duration::from_secs(30)).unwrap();
        d4c_tests::push_pause_image(&env("D4C_CRI_SANDBOX_IMAGE")).unwrap();
        node
    }

    fn start_snapshotter(&mut self) {
        self.snapshotter = Some(d4c_tests::start_snapshotter(
            Path::new(D4C),
            &self.root,
            &self.socket,
            &self.log,
            &self.containerd,
            &[
                "--metrics-address".to_string(),
                format!("127.0.0.1:{}", self.metrics),
            ],
        ));
    }

    fn stop_snapshotter(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            sh(Command::new("kill").args(["-TERM", &c.id().to_string()])).unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "snapshotter exit: {status}");
        }
    }

    fn ctr(&self, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["--namespace", namespace])
            .args(args))
    }

    /// The snapshotter's log lines about fetching `manifest`.
    fn fetches_of(&self, manifest: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("fetched") && l.contains(manifest))
            .map(str::to_string)
            .collect()
    }

    /// Runs a container of `image` in a new pod; returns both.
    fn run(&mut self, name: &str, image: &str) -> (Pod, String) {
        let pod = self.cri.run_pod(name).unwrap();
        let sleep = ["/bin/busybox", "sleep", "3600"];
        let c = self
            .cri
            .start_container(&pod, "app", image, &sleep)
            .unwrap();
        (pod, c)
    }

    fn cat(&mut self, container: &str, path: &str) -> String {
        let (code, out, err) = self
            .cri
            .exec(container, &["/bin/busybox", "cat", path])
            .unwrap();
        assert_eq!(code, 0, "cat {path}: {err}");
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// `v1`, `v2`, `v3` of the series pushed by skopeo as ordinary images to a
/// repository of this run; returns it with each tag's manifest digest.
fn push_series(s: &Series, name: &str) -> (String, Vec<String>) {
    let repo = format!(
        "{}/d4c-test/{name}-{}",
        env("D4C_TEST_REGISTRY"),
        std::process::id()
    );
    let mut digests = Vec::new();
    for tag in ["v1", "v2", "v3"] {
        let dest = format!("docker://{repo}:{tag}");
        sh(Command::new("skopeo").args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", s.dir.join("oci").display()),
            &dest,
        ]))
        .unwrap();
        let raw =
            sh(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &dest]))
                .unwrap();
        digests.push(d4c_host::digest::Digest::of(raw.as_bytes()).oci());
    }
    (repo, digests)
}

/// The libssl3 versions the series' v1..v3 carry, oldest first.
fn app_versions() -> Vec<String> {
    let mut v: Vec<String> = debian_versions("libssl3").unwrap()[..3].to_vec();
    v.reverse();
    v
}

/// The layer digests of the manifest `digest` in `repo`.
fn layers_of(repo: &str, digest: &str) -> Vec<String> {
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{repo}@{digest}"),
    ]))
    .unwrap();
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kubelet_pulls_an_ordinary_tag_as_a_delta() {
    let Some(_) = d4c_tests::services::env("D4C_CRI_ADDRESS") else {
        return;
    };
    let mut node = Node::start();
    let s = Series::build(Path::new(D4C), "cri-pull");
    let (repo, m) = push_series(&s, "cri");
    let versions = app_versions();
    for (file, tag) in [("v1.cdimg", "v1"), ("v2.cdimg", "v2"), ("d12.cdimg", "v2")] {
        s.ok(&["push", &s.p(file), &format!("{repo}:{tag}"), "--attach"]);
    }

    // Nothing held: the full cdimg of v1, then a pod runs it.
    let v1 = format!("{repo}:v1");
    node.cri.pull(&v1).unwrap();
    let fetched = node.fetches_of(&m[0]);
    assert!(
        fetched.len() == 1 && fetched[0].contains("from nothing held"),
        "{fetched:?}"
    );
    let (pod1, c1) = node.run("v1", &v1);
    assert_eq!(node.cat(&c1, "/etc/app-version").trim(), versions[0]);

    // kubelet's image garbage collection removes v1: its snapshots go, the
    // image stays in the snapshotter's store as the base of the next update.
    node.cri.remove_pod(&pod1).unwrap();
    node.cri.remove_image(&v1).unwrap();
    assert!(node.cri.image(&v1).unwrap().is_none());
    let meta = std::fs::read_to_string(node.root.join("metadata.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let of_v1 = |s: &&serde_json::Value| s["labels"][MANIFEST_LABEL] == m[0].as_str();
    let snapshots = meta["snapshots"].as_object().unwrap();
    assert!(!snapshots.values().any(|s| of_v1(&s)), "{meta}");
    assert!(meta["images"][&m[0][7..]].is_object(), "{meta}");

    // v2 comes as the delta from it: the registry sends the delta's bytes,
    // and containerd fetches no layer blob.
    let v2 = format!("{repo}:v2");
    node.cri.pull(&v2).unwrap();
    let fetched = node.fetches_of(&m[1]);
    let d12 = std::fs::metadata(s.dir.join("d12.cdimg")).unwrap().len();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(
        fetched[0].contains(&format!(" {d12} bytes received")),
        "{fetched:?} (d12: {d12})"
    );
    assert!(fetched[0].contains("held image"), "{fetched:?}");
    // Its metrics count the fetch, the bytes and what they saved.
    let metric = |name: &str, labels: &str| d4c_tests::scrape_metric(node.metrics, name, labels);
    assert!(metric("d4c_snapshotter_fetches_total", "result=\"fetched\"") >= 1);
    assert!(metric("d4c_snapshotter_bytes_received_total", "") >= d12);
    assert!(metric("d4c_snapshotter_bytes_saved_total", "") > 0);
    assert!(metric("d4c_snapshotter_requests_total", "method=\"Prepare\"") >= 1);
    assert!(metric("d4c_codec_calls_total", "op=\"patch\",result=\"ok\"") >= 1);
    let content = node.ctr("k8s.io", &["content", "ls", "-q"]).unwrap();
    for l in layers_of(&repo, &m[0])
        .iter()
        .chain(&layers_of(&repo, &m[1]))
    {
        assert!(
            !content.contains(l.as_str()),
            "containerd fetched layer {l}"
        );
    }
    // containerd lists v2 under its original manifest digest; a pod sees v2.
    let images = node.ctr("k8s.io", &["images", "ls"]).unwrap();
    let line = images
        .lines()
        .find(|l| l.starts_with(&format!("{v2} ")))
        .unwrap();
    assert!(line.contains(&m[1]), "{line}");
    let (pod2, c2) = node.run("v2", &v2);
    assert_eq!(node.cat(&c2, "/etc/app-version").trim(), versions[1]);

    // The snapshotter restarts while the pod runs: the pod reads on, files it
    // had not read yet included (the mount manager serves them meanwhile).
    node.stop_snapshotter();
    let lib = format!("/opt/app-{}/libcrypto.so.3", versions[1]);
    let (code, out, err) = node
        .cri
        .exec(&c2, &["/bin/busybox", "sha256sum", &lib])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let want = d4c_tests::debian_file(
        "libssl3",
        &versions[1],
        "usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    )
    .unwrap();
    assert!(
        out.starts_with(&d4c_host::digest::Digest::of(&want).hex()),
        "{out}"
    );
    node.start_snapshotter();
    assert_eq!(node.cat(&c2, "/etc/app-version").trim(), versions[1]);

    // An ordinary image whose layers are v2's first ones (v1, from a
    // repository without artifacts) finds them as v2's placeholders: the
    // one it runs from is filled in with v1's tree.
    let plain = format!("{repo}-plain:v1");
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", s.dir.join("oci").display()),
        &format!("docker://{plain}"),
    ]))
    .unwrap();
    node.cri.pull(&plain).unwrap();
    let (pod1, c1) = node.run("v1-plain", &plain);
    assert_eq!(node.cat(&c1, "/etc/app-version").trim(), versions[0]);
    let lib1 = format!("/opt/app-{}/libcrypto.so.3", versions[0]);
    let (code, _, err) = node
        .cri
        .exec(&c1, &["/bin/busybox", "test", "-f", &lib1])
        .unwrap();
    assert_eq!(code, 0, "{lib1} missing: {err}");
    let meta = std::fs::read_to_string(node.root.join("metadata.json")).unwrap();
    assert!(
        meta.contains("\"whole\": true"),
        "no placeholder was filled in"
    );

    // No artifacts: unpacked as overlayfs would, layers fetched by containerd.
    let v3 = format!("{repo}:v3");
    node.cri.pull(&v3).unwrap();
    assert!(node.fetches_of(&m[2]).is_empty());
    let content = node.ctr("k8s.io", &["content", "ls", "-q"]).unwrap();
    let top = layers_of(&repo, &m[2]).pop().unwrap();
    assert!(content.contains(&top), "containerd did not fetch {top}");
    let (pod3, c3) = node.run("v3", &v3);
    assert_eq!(node.cat(&c3, "/etc/app-version").trim(), versions[2]);

    for p in [pod1, pod2, pod3] {
        node.cri.remove_pod(&p).unwrap();
    }
    for image in [plain, v2, v3] {
        node.cri.remove_image(&image).unwrap();
    }
    node.stop_snapshotter();
}

/// As systemd starts it (`Type=notify`, `--config`): READY=1 comes once the
/// socket answers; a bad configuration is a one-line error and status 2.
#[test]
fn the_snapshotter_starts_as_systemd_expects() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(D4C).parent().unwrap().join("d4c-snapshotter");
    let config = dir.path().join("snapshotter.toml");
    let socket = dir.path().join("run/snapshotter.sock");
    std::fs::write(
        &config,
        format!(
            "root = \"{}\"\naddress = \"{}\"\nlog_level = \"warn\"\n",
            dir.path().join("root").display(),
            socket.display()
        ),
    )
    .unwrap();
    let notify = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = listener
        .recv(&mut buf)
        .expect("no READY=1 from the snapshotter");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(
        UnixStream::connect(&socket).is_ok(),
        "READY=1 before serving"
    );
    sh(Command::new("kill").args(["-TERM", &child.id().to_string()])).unwrap();
    assert!(child.wait().unwrap().success());

    std::fs::write(&config, "root = \"/x\"\ncache_szie = \"1G\"\n").unwrap();
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("line 2") && err.contains("cache_szie"),
        "{err}"
    );
}
