//! `d4c serve`'s blob store as a hostile client meets it (containerd's content
//! store tests are the model): one writer per upload and nothing after its
//! PUT, a stored blob never replaced, wrong digests refused, uploads bounded,
//! and a request that makes a merge fail leaves the server serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

use d4c_host::digest::Digest;
use d4c_tests::raw::{builtin_codec, huge_claim_chain, Raw};

const D4C: &str = env!("CARGO_BIN_EXE_d4c");

/// `d4c serve` on a free port with a 1 MiB upload limit, killed on drop.
struct Server {
    child: Child,
    addr: String,
    store: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), &[])
    }

    /// A server on the store in `dir` (kept between servers), with `extra`
    /// options.
    fn start_in(dir: Arc<tempfile::TempDir>, extra: &[&str]) -> Server {
        let store = dir.path().join("store");
        let (child, url) = d4c_tests::start_serve(
            Command::new(D4C)
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--max-upload",
                    "1M",
                    "--store",
                ])
                .arg(&store)
                .args(extra)
                .env("D4C_HOME", dir.path().join("home"))
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.path().join("serve.log"))
                        .unwrap(),
                ),
        );
        let addr = url.trim_start_matches("http://").to_string();
        Server {
            child,
            addr,
            store,
            _dir: dir,
        }
    }

    /// Sends `head` (request line and headers, without the blank line) and
    /// `body`; returns the status and the response's headers and body.
    fn request(&self, head: &str, body: &[u8]) -> (u16, String) {
        let mut c = self.open(head, body.len());
        c.write_all(body).unwrap();
        response(c)
    }

    /// Starts a request whose body of `len` bytes the caller writes.
    fn open(&self, head: &str, len: usize) -> TcpStream {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "{head}\r\nHost: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        c
    }

    /// A new upload's path.
    fn upload(&self) -> String {
        let (status, resp) = self.request("POST /v2/t/blobs/uploads/ HTTP/1.1", b"");
        assert_eq!(status, 202, "{resp}");
        header(&resp, "location")
    }

    /// Uploads `data` in one PUT claiming `digest`; returns the status.
    fn put(&self, data: &[u8], digest: &Digest) -> u16 {
        let loc = self.upload();
        self.request(&format!("PUT {loc}?digest={digest:?} HTTP/1.1"), data)
            .0
    }

    fn blob_file(&self, d: &Digest) -> PathBuf {
        self.store.join("blobs/sha256").join(d.hex())
    }

    fn alive(&self) {
        assert_eq!(
            self.request("GET /v2/ HTTP/1.1", b"").0,
            200,
            "the server died"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn response(mut c: TcpStream) -> (u16, String) {
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

fn header(resp: &str, name: &str) -> String {
    resp.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in {resp}"))
}

#[test]
fn one_writer_per_upload_and_nothing_after_its_put() {
    let s = Server::start();
    let data: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
    let digest = Digest::of(&data);
    let loc = s.upload();
    // A PATCH still streaming: half its body sent.
    let mut first = s.open(&format!("PATCH {loc} HTTP/1.1"), data.len());
    first.write_all(&data[..1000]).unwrap();
    first.flush().unwrap();
    // Claimed and streaming once its first bytes are in the upload's file.
    let file = s
        .store
        .join("uploads")
        .join(loc.rsplit('/').next().unwrap());
    let t = std::time::Instant::now();
    while std::fs::metadata(&file).map_or(0, |m| m.len()) < 1000 {
        assert!(t.elapsed().as_secs() < 30, "the first PATCH never arrived");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A second writer, and a PUT that would adopt the upload now: refused.
    let (status, resp) = s.request(&format!("PATCH {loc} HTTP/1.1"), b"evil");
    assert_eq!(status, 409, "{resp}");
    let (status, resp) = s.request(&format!("PUT {loc}?digest={digest:?} HTTP/1.1"), b"");
    assert_eq!(status, 409, "{resp}");
    // The first writer finishes, then the upload is adopted.
    first.write_all(&data[1000..]).unwrap();
    let (status, resp) = response(first);
    assert_eq!(status, 202, "{resp}");
    let (status, resp) = s.request(&format!("PUT {loc}?digest={digest:?} HTTP/1.1"), b"");
    assert_eq!(status, 201, "{resp}");
    // Nothing can be written into it any more.
    let (status, resp) = s.request(&format!("PATCH {loc} HTTP/1.1"), b"more");
    assert_eq!(status, 404, "{resp}");
    assert_eq!(std::fs::read(s.blob_file(&digest)).unwrap(), data);
}

#[test]
fn a_stored_blob_is_never_replaced_and_wrong_digests_are_refused() {
    use std::os::unix::fs::MetadataExt;
    let s = Server::start();
    let good = b"the real content".to_vec();
    let d = Digest::of(&good);
    assert_eq!(s.put(&good, &d), 201);
    let inode = std::fs::metadata(s.blob_file(&d)).unwrap().ino();
    // Other bytes claiming the digest; the same bytes again.
    assert_eq!(s.put(b"other content", &d), 400);
    assert_eq!(s.put(&good, &d), 201);
    let m = std::fs::metadata(s.blob_file(&d)).unwrap();
    assert_eq!(m.ino(), inode, "the stored blob was replaced");
    assert_eq!(std::fs::read(s.blob_file(&d)).unwrap(), good);
    // A wrong digest stores nothing.
    let wrong = Digest::of(b"something else");
    assert_eq!(s.put(b"junk", &wrong), 400);
    assert!(!s.blob_file(&wrong).exists());
    assert!(!s.blob_file(&Digest::of(b"junk")).exists());
    // A manifest naming a blob of the wrong size is refused.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d.oci(), "size": good.len() + 1},
        "layers": [],
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    let (status, resp) = s.request(
        "PUT /v2/t/manifests/x HTTP/1.1\r\nContent-Type: application/vnd.oci.image.manifest.v1+json",
        &body,
    );
    assert_eq!(status, 404, "{resp}");
    assert!(resp.contains("MANIFEST_BLOB_UNKNOWN"), "{resp}");
}

/// Refused from its Content-Length, before the body is sent: the client waits
/// for `100 Continue`, which never comes. Chunks of one upload add up.
#[test]
fn uploads_are_bounded() {
    let s = Server::start();
    let loc = s.upload();
    let expect = |loc: &str, len: usize| {
        let c = s.open(
            &format!("PATCH {loc} HTTP/1.1\r\nExpect: 100-continue"),
            len,
        );
        response(c)
    };
    let (status, resp) = expect(&loc, 2 << 20);
    assert_eq!(status, 413, "{resp}");
    let part = vec![1u8; 600 << 10];
    assert_eq!(s.request(&format!("PATCH {loc} HTTP/1.1"), &part).0, 202);
    let (status, resp) = expect(&loc, part.len());
    assert_eq!(status, 413, "{resp}");
    s.alive();
}

/// A pull whose merge meets a delta claiming a 1 TiB file: the request fails,
/// the server goes on serving.
#[test]
fn a_hostile_delta_fails_its_merge_not_the_server() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let home = dir.path().join("home");
    let run = |args: &[&str]| {
        let out = Command::new(D4C)
            .args(args)
            .env("D4C_HOME", &home)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    huge_claim_chain(dir.path(), builtin_codec(Path::new(D4C), "bsdiff"));
    for (file, tag) in [("v1.cdimg", "v1"), ("d1.cdimg", "v2"), ("d2.cdimg", "v3")] {
        let (ok, err) = run(&[
            "push",
            &p(file).to_string_lossy(),
            &format!("{}/t/huge:{tag}", s.addr),
        ]);
        assert!(ok, "push {file}: {err}");
    }
    let (ok, err) = run(&[
        "pull",
        "--server",
        &format!("http://{}", s.addr),
        "t/huge:v3",
        "--have",
        &p("v1.cdimg").to_string_lossy(),
        "-o",
        &p("v3.cdimg").to_string_lossy(),
    ]);
    assert!(!ok, "the pull succeeded");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!Path::new(&p("v3.cdimg")).exists());
    s.alive();
}

#[test]
fn the_store_quota_refuses_uploads_past_it() {
    let s = Server::start_in(Arc::new(tempfile::tempdir().unwrap()), &["--quota", "100K"]);
    let a = vec![1u8; 60 << 10];
    assert_eq!(s.put(&a, &Digest::of(&a)), 201);
    let b = vec![2u8; 60 << 10];
    assert_eq!(s.put(&b, &Digest::of(&b)), 507);
    // Refused from its Content-Length, it took nothing: what fits still goes.
    let c = vec![3u8; 30 << 10];
    assert_eq!(s.put(&c, &Digest::of(&c)), 201);
    s.alive();
}

/// Blobs nothing reaches go (once old); what a tag, a manifest or the d4c
/// index reaches stays, and the repository still pulls.
#[test]
fn garbage_collection_keeps_what_tags_and_indexes_reach() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let s = Server::start_in(dir.clone(), &[]);
    let p = |n: &str| dir.path().join(n);
    let home = dir.path().join("home");
    let mut r = Raw::new();
    let f = r.file("f", b"kept content\n");
    r.write(&p("v1.cdimg"), None, vec![], vec![f]);
    let out = Command::new(D4C)
        .args([
            "push",
            &p("v1.cdimg").to_string_lossy(),
            &format!("{}/t/app:v1", s.addr),
        ])
        .env("D4C_HOME", &home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stray = b"pushed, never named".to_vec();
    let stray_d = Digest::of(&stray);
    assert_eq!(s.put(&stray, &stray_d), 201);
    let kept: Vec<PathBuf> = std::fs::read_dir(s.store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(stray_d.hex()))
        .collect();
    assert!(kept.len() >= 4, "{kept:?}");
    drop(s);
    // Everything is two days old now; the server collects at start.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for e in std::fs::read_dir(dir.path().join("store/blobs/sha256")).unwrap() {
        let f = std::fs::File::open(e.unwrap().path()).unwrap();
        f.set_modified(old).unwrap();
    }
    let s = Server::start_in(dir.clone(), &[]);
    assert!(!s.blob_file(&stray_d).exists(), "the stray blob stayed");
    for k in &kept {
        assert!(k.exists(), "{} was collected", k.display());
    }
    let out = Command::new(D4C)
        .args([
            "pull",
            &format!("{}/t/app:v1", s.addr),
            "-o",
            &p("again.cdimg").to_string_lossy(),
        ])
        .env("D4C_HOME", &home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("removed 1 unreferenced blob(s)"), "{log}");
}
