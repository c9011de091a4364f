//! The snapshotter and `d4c load` with real containerd and runc (started by
//! `scripts/services up`, which `scripts/test` runs): containers from a loaded
//! image and delta, two at once, writes that stay in the container, a restart of
//! the snapshotter, removal, and an ordinary OCI image unpacked into it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use d4c_tests::series::Series;
use d4c_tests::sh;

fn series() -> &'static Series {
    static S: OnceLock<Series> = OnceLock::new();
    S.get_or_init(|| Series::build(Path::new(env!("CARGO_BIN_EXE_d4c")), "containerd-tests"))
}

/// containerd (from scripts/services) and our own snapshotter process.
struct Harness {
    containerd: PathBuf,
    socket: PathBuf,
    namespace: String,
    root: PathBuf,
    snapshotter: Option<Child>,
}

fn env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

impl Harness {
    fn start_snapshotter(&mut self) {
        let log = self.root.with_extension("log");
        let _ = std::fs::remove_file(&log);
        let child = d4c_tests::start_snapshotter(
            Path::new(env!("CARGO_BIN_EXE_d4c")),
            &self.root,
            &self.socket,
            &log,
            &self.containerd,
            &[],
        );
        SNAPSHOTTER_PID.store(child.id(), std::sync::atomic::Ordering::SeqCst);
        self.snapshotter = Some(child);
    }

    fn stop_snapshotter(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            sh(Command::new("kill").args(["-TERM", &c.id().to_string()])).unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "snapshotter exit: {status}");
        }
    }

    /// `kill -9` of the snapshotter: no chance to unmount anything.
    fn kill_snapshotter(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["--namespace", &self.namespace])
            .args(args))
    }

    fn d4c(&self, s: &Series, args: &[&str]) -> String {
        let mut all = args.to_vec();
        let addr = self.containerd.to_string_lossy().into_owned();
        all.extend(["--address", &addr, "--namespace", &self.namespace]);
        s.ok(&all)
    }

    /// Runs `/etc/app-version` through `cat` in a new container of `image`.
    fn cat_version(&self, image: &str, id: &str) -> String {
        self.ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            "d4c",
            image,
            id,
            "/bin/busybox",
            "cat",
            "/etc/app-version",
        ])
        .unwrap()
    }

    /// FUSE mounts the snapshotter has below its root.
    fn fuse_mounts(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(self.root.to_str().unwrap()) && l.contains(" fuse"))
            .map(str::to_string)
            .collect()
    }
}

/// The running snapshotter, for [`stop_at_exit`]: statics are never dropped.
static SNAPSHOTTER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The harness's snapshotter root, for [`stop_at_exit`].
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Detaches every mount below `root`, deepest first (as a reboot would end
/// them; the mount manager then exits by itself).
fn unmount_below(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(root))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

extern "C" fn stop_at_exit() {
    let pid = SNAPSHOTTER_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    // The mounts outlive the snapshotter by design; the tests' ones go.
    if let Some(root) = ROOT.get() {
        unmount_below(root);
    }
}

/// One harness, used by one test at a time (a test restarts the snapshotter).
fn harness() -> MutexGuard<'static, Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let containerd = env_or(
            "CONTAINERD_ADDRESS",
            "/tmp/d4c-services/containerd/containerd.sock",
        );
        assert!(
            containerd.exists(),
            "containerd is not running at {}: run scripts/services up",
            containerd.display()
        );
        let root = d4c_tests::data_dir().join("snapshotter-root");
        // Leftovers of an earlier run: its snapshotter and mount manager,
        // their mounts.
        let _ = Command::new("pkill")
            .args([
                "-TERM",
                "-f",
                &format!("d4c-snapshotter .*--root {}", root.display()),
            ])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        unmount_below(&root);
        let _ = std::fs::remove_dir_all(&root);
        let _ = ROOT.set(root.clone());
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(stop_at_exit) };
        let mut h = Harness {
            containerd,
            socket: env_or(
                "D4C_SNAPSHOTTER_ADDRESS",
                "/tmp/d4c-services/snapshotter/snapshotter.sock",
            ),
            // Unique per run: containerd keeps its records between runs.
            namespace: format!("d4c-test-{}", std::process::id()),
            root,
            snapshotter: None,
        };
        h.start_snapshotter();
        Mutex::new(h)
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn version_of(s: &Series, tag: &str) -> String {
    let x = s.p(&format!("x-{tag}"));
    if !Path::new(&x).exists() {
        let chain: Vec<String> = match tag {
            "v1" => vec![s.p("v1.cdimg")],
            "v2" => vec![s.p("v1.cdimg"), s.p("d12.cdimg")],
            _ => vec![s.p("v3.cdimg")],
        };
        let mut args = vec!["extract"];
        args.extend(chain.iter().map(String::as_str));
        args.extend(["-o", &x]);
        s.ok(&args);
    }
    std::fs::read_to_string(Path::new(&x).join("etc/app-version"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_loaded_delta_runs_and_shares_the_base() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    let s = series();
    let h = harness();
    h.d4c(s, &["load", "d4c.test/app:v1", &s.p("v1.cdimg")]);
    h.d4c(
        s,
        &[
            "load",
            "d4c.test/app:v2",
            &s.p("v1.cdimg"),
            &s.p("d12.cdimg"),
        ],
    );
    let out = h.cat_version("d4c.test/app:v2", "load-v2");
    assert_eq!(out.trim(), version_of(s, "v2"));
    assert_ne!(version_of(s, "v1"), version_of(s, "v2"));
    // Registered as the original image: the publisher's manifest digest, so
    // a digest-pinned reference names it.
    let manifest = d4c_tests::tagged_manifest(&s.dir.join("oci"), "v2");
    let listed = h.ctr(&["images", "ls"]).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with("d4c.test/app:v2 "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(&manifest), "{line} does not name {manifest}");
    h.ctr(&[
        "images",
        "tag",
        "d4c.test/app:v2",
        &format!("d4c.test/app@{manifest}"),
    ])
    .unwrap();
    let pinned = h.cat_version(&format!("d4c.test/app@{manifest}"), "load-pinned");
    assert_eq!(pinned.trim(), version_of(s, "v2"));
    // v1's file is stored once: the image store holds v1 and the delta only.
    let stored: Vec<u64> = std::fs::read_dir(h.root.join("images"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    let mut want = vec![
        std::fs::metadata(s.p("v1.cdimg")).unwrap().len(),
        std::fs::metadata(s.p("d12.cdimg")).unwrap().len(),
    ];
    let mut got = stored.clone();
    want.sort();
    got.sort();
    assert!(
        got.len() >= 2 && want.iter().all(|w| got.contains(w)),
        "{got:?} vs {want:?}"
    );
    // Loading again is a no-op for the snapshot.
    let again = h.d4c(s, &["load", "d4c.test/app:v1", &s.p("v1.cdimg")]);
    assert!(again.contains("already loaded"), "{again}");
}

#[test]
fn two_containers_at_once_and_writes_stay_in_the_container() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    let s = series();
    let h = harness();
    h.d4c(s, &["load", "d4c.test/app:v3", &s.p("v3.cdimg")]);
    let run = |id: &str| -> std::process::Child {
        Command::new("ctr")
            .arg("--address")
            .arg(&h.containerd)
            .args(["--namespace", &h.namespace])
            .args(["run", "--rm", "--snapshotter", "d4c", "d4c.test/app:v3", id])
            .args([
                "/bin/busybox",
                "sh",
                "-c",
                &format!(
                    "echo {id} > /etc/app-version && /bin/busybox sleep 1 && /bin/busybox cat /etc/app-version"
                ),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (run("writer-a"), run("writer-b"));
    for (c, id) in [(a, "writer-a"), (b, "writer-b")] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    }
    let out = h.cat_version("d4c.test/app:v3", "reader");
    assert_eq!(out.trim(), version_of(s, "v3"));
}

#[test]
fn a_restart_keeps_snapshots_and_removal_unmounts() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    let s = series();
    let mut h = harness();
    h.d4c(
        s,
        &[
            "load",
            "d4c.test/restart:v2",
            &s.p("v1.cdimg"),
            &s.p("d12.cdimg"),
        ],
    );
    // The mount manager serves the image while the snapshotter is down; the
    // restarted snapshotter finds the same mount.
    let before = h.fuse_mounts();
    assert!(!before.is_empty());
    h.stop_snapshotter();
    assert_eq!(h.fuse_mounts(), before);
    h.start_snapshotter();
    assert_eq!(h.fuse_mounts(), before);
    let out = h.cat_version("d4c.test/restart:v2", "after-restart");
    assert_eq!(out.trim(), version_of(s, "v2"));

    // Removing every image of the namespace removes its snapshots and mounts.
    let images = h.ctr(&["images", "ls", "-q"]).unwrap();
    let mut args = vec!["images", "rm", "--sync"];
    args.extend(images.lines());
    h.ctr(&args).unwrap();
    let t = Instant::now();
    // `ctr snapshots ls` prints a header line, then one line per snapshot.
    while h
        .ctr(&["snapshots", "--snapshotter", "d4c", "ls"])
        .unwrap()
        .trim()
        .lines()
        .count()
        > 1
    {
        assert!(t.elapsed() < Duration::from_secs(30), "snapshots remain");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Other namespaces may hold snapshots of their own; ours are all gone from
    // the snapshotter's metadata and from the mounts.
    let meta = std::fs::read_to_string(h.root.join("metadata.json")).unwrap();
    assert!(!meta.contains(&format!("{}/", h.namespace)), "{meta}");
    // The snapshotter serves this namespace only: with its images gone, no
    // image mount is left.
    assert!(h.fuse_mounts().is_empty(), "{:?}", h.fuse_mounts());
}

#[test]
fn an_ordinary_oci_image_unpacks_into_it_and_runs() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    let s = series();
    let h = harness();
    let tar = s.p("oci.tar");
    sh(Command::new("tar").args(["-C", &s.p("oci"), "-cf", &tar, "."])).unwrap();
    h.ctr(&[
        "images",
        "import",
        "--base-name",
        "d4c.test/plain",
        "--snapshotter",
        "d4c",
        &tar,
    ])
    .unwrap();
    let out = h.cat_version("d4c.test/plain:v3", "plain");
    assert_eq!(out.trim(), version_of(s, "v3"));
}

#[test]
fn kill_9_of_the_snapshotter_with_a_container_running() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    let s = series();
    let mut h = harness();
    h.d4c(s, &["load", "d4c.test/crash:v3", &s.p("v3.cdimg")]);
    h.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "d4c",
        "d4c.test/crash:v3",
        "long-running",
        "/bin/busybox",
        "sleep",
        "600",
    ])
    .unwrap();
    let meta_before = std::fs::read_to_string(h.root.join("metadata.json")).unwrap();
    h.kill_snapshotter();
    // The container reads on: its image's mount is the manager's.
    let read = h
        .ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "after-kill-9",
            "long-running",
            "/bin/busybox",
            "cat",
            "/etc/app-version",
        ])
        .unwrap();
    assert_eq!(read.trim(), version_of(s, "v3"));
    // Its metadata is whole (written atomically), and says what it said.
    assert_eq!(
        std::fs::read_to_string(h.root.join("metadata.json")).unwrap(),
        meta_before
    );
    // Restarted, it serves new containers.
    h.start_snapshotter();
    let out = h.cat_version("d4c.test/crash:v3", "after-kill");
    assert_eq!(out.trim(), version_of(s, "v3"));
    // The old container can be stopped and removed as usual.
    let _ = h.ctr(&["tasks", "kill", "-s", "SIGKILL", "long-running"]);
    let t = Instant::now();
    while h.ctr(&["tasks", "rm", "-f", "long-running"]).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "task did not go");
        std::thread::sleep(Duration::from_millis(200));
    }
    h.ctr(&["containers", "rm", "long-running"]).unwrap();
    h.ctr(&["images", "rm", "--sync", "d4c.test/crash:v3"])
        .unwrap();
}

/// Containers keep their images' setuid programs: a process that drops to uid
/// 65534 and runs the image's setuid-root program gets euid 0 back, as on
/// overlayfs. The mounts behind them are reachable by root alone: the
/// snapshotter's root is 0700 and its socket 0600.
#[test]
fn containers_keep_their_setuid_programs() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let s = series();
    let h = harness();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.root), 0o700);
    assert_eq!(mode(&h.socket), 0o600);
    let dir = s.dir.join("suid");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("euid.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "drop") == 0) {
        if (setgid(65534) || setuid(65534)) return 2;
        execl("/euid", "/euid", (char *)0);
        return 3;
    }
    printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    return 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("euid");
    sh(Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src))
    .unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let data = std::fs::read(&bin).unwrap();
    let mut hd = tar::Header::new_gnu();
    hd.set_size(data.len() as u64);
    hd.set_mode(0o4755);
    hd.set_uid(0);
    hd.set_gid(0);
    hd.set_mtime(0);
    layer.append_data(&mut hd, "euid", &data[..]).unwrap();
    let layout = dir.join("layout");
    let _ = std::fs::remove_dir_all(&layout);
    d4c_tests::write_layout(&layout, "v1", &[layer.into_inner().unwrap()]).unwrap();
    let img = dir.join("suid.cdimg");
    let _ = std::fs::remove_file(&img);
    s.ok(&[
        "convert",
        &format!("{}:v1", layout.display()),
        "-o",
        &img.to_string_lossy(),
    ]);
    h.d4c(s, &["load", "d4c.test/suid:v1", &img.to_string_lossy()]);
    let out = h
        .ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            "d4c",
            "--allow-new-privs",
            "d4c.test/suid:v1",
            "suid-1",
            "/euid",
            "drop",
        ])
        .unwrap();
    assert_eq!(out.trim(), "uid=65534 euid=0");
}

/// The breakout corpus through the snapshotter: a hand-made image whose names
/// escape its tree is refused when loaded (the snapshotter's own import
/// validates it too), nothing lands outside, and other images still run.
#[test]
fn a_hostile_image_is_refused_and_the_snapshotter_serves_on() {
    let Some(_) = d4c_tests::services::env("CONTAINERD_ADDRESS") else {
        return;
    };
    use d4c_host::image::entry::Kind;
    use d4c_tests::raw::{entry, Raw};
    let s = series();
    let h = harness();
    let dir = s.dir.join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("hostile.cdimg");
    let mut r = Raw::new();
    let pwned = r.file("\\x2e\\x2e/\\x2e\\x2e/\\x2e\\x2e/pwned", b"pwned");
    r.write(
        &img,
        None,
        vec![],
        vec![
            entry("\\x2e\\x2e", Kind::Dir),
            entry("\\x2e\\x2e/\\x2e\\x2e", Kind::Dir),
            entry("\\x2e\\x2e/\\x2e\\x2e/\\x2e\\x2e", Kind::Dir),
            pwned,
        ],
    );
    let addr = h.containerd.to_string_lossy().into_owned();
    let img_s = img.to_string_lossy().into_owned();
    let (ok, _, err) = s.run(&[
        "load",
        "d4c.test/hostile:v1",
        &img_s,
        "--address",
        &addr,
        "--namespace",
        &h.namespace,
    ]);
    assert!(!ok && err.contains("invalid header"), "{err}");
    for base in [h.root.parent().unwrap(), h.root.as_path(), dir.as_path()] {
        assert!(!base.join("pwned").exists(), "{}", base.display());
    }
    h.d4c(s, &["load", "d4c.test/app:v1", &s.p("v1.cdimg")]);
    let out = h.cat_version("d4c.test/app:v1", "after-hostile");
    assert_eq!(out.trim(), version_of(s, "v1"));
}
