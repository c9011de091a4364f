//! `d4c mount` on real FUSE: a chain of the small real series served lazily,
//! compared with `d4c extract`; programs run from it; many readers at once; a
//! corrupted blob; signals, `umount` and a stale mount left by `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use d4c_host::digest::Digest;
use d4c_host::image::entry::Kind;
use d4c_host::image::format::Reader;
use d4c_tests::series::Series;
use d4c_tests::{sh, tree_listing};

fn series() -> &'static Series {
    static S: OnceLock<Series> = OnceLock::new();
    S.get_or_init(|| Series::build(Path::new(env!("CARGO_BIN_EXE_d4c")), "mount-tests"))
}

/// A daemon mount that is unmounted when dropped (so a failing test leaves no
/// mount behind).
struct Mounted {
    dir: PathBuf,
    pid: u32,
}

impl Mounted {
    /// Mounts `chain` (file names in the series dir) at a fresh mount point
    /// `name`, with its own cache and log.
    fn new(s: &Series, name: &str, chain: &[&str]) -> Mounted {
        Self::with(s, name, chain, &[])
    }

    /// [`Mounted::new`] with more `mount` options.
    fn with(s: &Series, name: &str, chain: &[&str], extra: &[&str]) -> Mounted {
        let dir = s.dir.join(name);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = vec!["mount".into()];
        args.extend(chain.iter().map(|c| s.p(c)));
        args.push(dir.to_string_lossy().into_owned());
        args.extend([
            "--daemon".into(),
            "--cache-dir".into(),
            s.p(&format!("{name}.cache")),
            "--log".into(),
            s.p(&format!("{name}.log")),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let pid = out
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"));
        Mounted { dir, pid }
    }

    fn log(&self, s: &Series) -> String {
        let name = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::read_to_string(s.p(&format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
        wait_gone(self.pid);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_gone(pid: u32) {
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

#[test]
fn a_mounted_chain_equals_extract_and_runs_programs() {
    let s = series();
    let m = Mounted::new(s, "mnt-chain", &["v1.cdimg", "d12.cdimg", "d23.cdimg"]);
    let x = s.p("x-chain");
    let _ = std::fs::remove_dir_all(&x);
    s.ok(&[
        "extract",
        &s.p("v1.cdimg"),
        &s.p("d12.cdimg"),
        &s.p("d23.cdimg"),
        "-o",
        &x,
    ]);
    // Every path: type, mode, owner, size, mtime, nlink, link target, content, xattrs.
    assert_eq!(tree_listing(&m.dir), tree_listing(Path::new(&x)));
    // The image's own binary, run from the mount, reads the v3 version.
    let version =
        sh(Command::new("chroot")
            .arg(&m.dir)
            .args(["/bin/busybox", "cat", "/etc/app-version"]))
        .unwrap();
    assert_eq!(
        version.trim(),
        std::fs::read_to_string(Path::new(&x).join("etc/app-version"))
            .unwrap()
            .trim()
    );
    // readdir has . and ..; statfs answers; writes are refused.
    let ls = sh(Command::new("ls").arg("-a").arg(&m.dir)).unwrap();
    assert!(
        ls.lines().any(|l| l == ".") && ls.lines().any(|l| l == ".."),
        "{ls}"
    );
    let df = sh(Command::new("stat").args(["-f", "-c", "%b %c"]).arg(&m.dir)).unwrap();
    assert_ne!(df.trim(), "0 0", "statfs: {df}");
    let err = std::fs::write(m.dir.join("etc/app-version"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Inode numbers are stable across lookups, and hardlinks (if any) share them.
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(m.dir.join("etc/app-version"))
        .unwrap()
        .ino();
    let b = std::fs::metadata(m.dir.join("etc/app-version"))
        .unwrap()
        .ino();
    assert_eq!(a, b);
}

#[test]
fn edge_case_metadata_is_served_exactly() {
    // A tree with devices, a fifo, hardlinks, xattrs, odd names and a long path.
    use tar::EntryType as T;
    let s = series();
    let dir = s.dir.join("edge");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add =
        |kind: T, path: &str, mode: u32, data: &[u8], link: Option<&str>, dev: (u32, u32)| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(1000);
            h.set_gid(100);
            h.set_mtime(1_700_000_000);
            if kind == T::Char || kind == T::Block {
                h.set_device_major(dev.0).unwrap();
                h.set_device_minor(dev.1).unwrap();
            }
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
    add(T::Directory, "etc", 0o755, b"", None, (0, 0));
    add(T::Regular, "etc/a", 0o640, b"hello", None, (0, 0));
    add(T::Link, "etc/hard", 0o640, b"", Some("etc/a"), (0, 0));
    add(T::Link, "etc/hard2", 0o640, b"", Some("etc/a"), (0, 0));
    add(T::Symlink, "etc/sym", 0o777, b"", Some("a"), (0, 0));
    add(T::Char, "dev/null", 0o666, b"", None, (1, 3));
    add(T::Block, "dev/loop0", 0o660, b"", None, (7, 0));
    add(T::Fifo, "run/pipe", 0o644, b"", None, (0, 0));
    add(T::Regular, "etc/empty", 0o4755, b"", None, (0, 0));
    add(
        T::Regular,
        &format!("deep/{}/file", "d".repeat(150)),
        0o600,
        b"deep",
        None,
        (0, 0),
    );
    let layer = b.into_inner().unwrap();
    let layout = dir.join("oci");
    d4c_tests::write_layout(&layout, "edge", &[layer]).unwrap();
    let img = dir.join("edge.cdimg");
    s.ok(&[
        "convert",
        &format!("{}:edge", layout.display()),
        "-o",
        img.to_str().unwrap(),
    ]);
    let x = dir.join("x");
    s.ok(&["extract", img.to_str().unwrap(), "-o", x.to_str().unwrap()]);
    let m = Mounted::new(s, "mnt-edge", &["edge/edge.cdimg"]);
    assert_eq!(tree_listing(&m.dir), tree_listing(&x));
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(m.dir.join("etc/a")).unwrap();
    let h = std::fs::metadata(m.dir.join("etc/hard2")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (h.ino(), 3));
    let null = std::fs::symlink_metadata(m.dir.join("dev/null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
}

/// The content digest of every regular file of the top image, by path.
fn expected_digests(s: &Series, top: &str) -> BTreeMap<String, Digest> {
    let r = Reader::open(Path::new(&s.p(top))).unwrap();
    r.header()
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| (e.path.clone(), e.digest.unwrap()))
        .collect()
}

#[test]
fn many_parallel_readers_of_the_same_and_different_files() {
    let s = series();
    let m = Mounted::new(s, "mnt-parallel", &["v1.cdimg", "d12.cdimg", "d23.cdimg"]);
    let want = expected_digests(s, "v3.cdimg");
    let paths: Vec<&String> = want.keys().collect();
    // The largest file (a rebuilt libcrypto) is read by every thread at once;
    // the others in a different order per thread.
    let big = want
        .keys()
        .max_by_key(|p| std::fs::metadata(m.dir.join(p)).unwrap().len())
        .unwrap();
    std::thread::scope(|scope| {
        for t in 0..16 {
            let (m, want, paths) = (&m, &want, &paths);
            scope.spawn(move || {
                let got = Digest::of(&std::fs::read(m.dir.join(big)).unwrap());
                assert_eq!(got, want[big], "{big}");
                for i in 0..paths.len() {
                    let p = paths[(i * 7 + t * 13) % paths.len()];
                    let got = Digest::of(&std::fs::read(m.dir.join(p)).unwrap());
                    assert_eq!(got, want[p], "{p}");
                }
            });
        }
    });
    assert!(!m.log(s).contains("EIO"), "{}", m.log(s));
}

/// The mount's options as /proc/self/mountinfo lists them.
fn mount_options(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted", dir.display()));
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect()
}

/// A root mount is readable by every local user, so by default the image's
/// setuid programs and devices do not act there; `--suid-dev` asks for them.
#[test]
fn mounts_are_nosuid_nodev_unless_asked() {
    let s = series();
    let m = Mounted::new(s, "mnt-opts", &["v1.cdimg"]);
    let o = mount_options(&m.dir);
    assert!(
        o.contains(&"nosuid".into()) && o.contains(&"nodev".into()),
        "{o:?}"
    );
    drop(m);
    let m = Mounted::with(s, "mnt-opts-suid", &["v1.cdimg"], &["--suid-dev"]);
    let o = mount_options(&m.dir);
    assert!(
        !o.contains(&"nosuid".into()) && !o.contains(&"nodev".into()),
        "{o:?}"
    );
}

#[test]
fn a_corrupted_blob_fails_that_file_only_with_eio() {
    let s = series();
    // Flip a byte in the middle of one codec delta of d23.
    let (offset, victim) = d4c_tests::series::first_delta_byte(Path::new(&s.p("d23.cdimg")));
    let mut data = std::fs::read(s.p("d23.cdimg")).unwrap();
    data[offset as usize] ^= 0x20;
    std::fs::write(s.p("d23-bad.cdimg"), &data).unwrap();

    let m = Mounted::new(s, "mnt-bad", &["v1.cdimg", "d12.cdimg", "d23-bad.cdimg"]);
    let err = std::fs::read(m.dir.join(&victim)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{victim}: {err}");
    // Asked again: still EIO, never bytes, and the failed rebuild is not run
    // again (a failing codec would cost up to its time cap on every read).
    assert!(std::fs::read(m.dir.join(&victim)).is_err());
    assert!(
        m.log(s).contains("not tried again"),
        "the rebuild ran again: {}",
        m.log(s)
    );
    assert!(
        m.log(s).contains(&victim),
        "the log names {victim}: {}",
        m.log(s)
    );
    // Everything else reads, with the right content; other paths with the same
    // content (the series has libcrypto twice) fail the same way.
    let want = expected_digests(s, "v3.cdimg");
    let bad = want[&victim];
    for (p, d) in want.iter().filter(|(_, d)| **d == bad) {
        let err = std::fs::read(m.dir.join(p)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{p} ({d:?}): {err}");
    }
    for (p, d) in want.iter().filter(|(_, d)| **d != bad) {
        let got = Digest::of(&std::fs::read(m.dir.join(p)).unwrap());
        assert_eq!(got, *d, "{p}");
    }
}

#[test]
fn signals_umount_and_a_stale_mount_after_kill_9() {
    let s = series();
    // Foreground mount: SIGTERM and SIGINT unmount cleanly and end the process.
    for sig in ["-TERM", "-INT"] {
        let dir = s.dir.join(format!("mnt-fg{sig}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_d4c"))
            .env("D4C_HOME", &s.home)
            .args(["mount", &s.p("v1.cdimg")])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !dir.join("etc").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sh(Command::new("kill").arg(sig).arg(child.id().to_string())).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{sig}: {status}");
        assert!(!mounted(&dir), "{sig}: still mounted");
    }

    // `d4c umount` ends the daemon.
    let m = Mounted::new(s, "mnt-umount", &["v1.cdimg"]);
    s.ok(&["umount", m.dir.to_str().unwrap()]);
    wait_gone(m.pid);
    assert!(!alive(m.pid) && !mounted(&m.dir));
    let e = s.fails(&["umount", m.dir.to_str().unwrap()]);
    assert!(e.contains("not a mount point"), "{e}");

    // kill -9 leaves a dead mount; the next mount there cleans it up.
    let m = Mounted::new(s, "mnt-stale", &["v1.cdimg"]);
    sh(Command::new("kill").args(["-9", &m.pid.to_string()])).unwrap();
    wait_gone(m.pid);
    let err = std::fs::read_dir(&m.dir).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );
    // A live mount is refused, a stale one replaced.
    let again = Mounted::new(s, "mnt-stale2", &["v1.cdimg"]);
    let e = s.fails(&[
        "mount",
        &s.p("v1.cdimg"),
        again.dir.to_str().unwrap(),
        "--daemon",
    ]);
    assert!(e.contains("already a live d4c mount"), "{e}");
    let mut args = vec!["mount".to_string(), s.p("v1.cdimg"), s.p("mnt-stale")];
    args.push("--daemon".into());
    let out = s.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(std::fs::read_dir(&m.dir).unwrap().count() > 0, "{out}");
    s.ok(&["umount", m.dir.to_str().unwrap()]);
}
