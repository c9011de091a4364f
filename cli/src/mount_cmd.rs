//! `d4c mount` and `d4c umount`: serve an image chain as a lazy FUSE file system,
//! in the foreground (until unmounted, SIGINT or SIGTERM) or as a daemon.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use d4c_host::home;
use d4c_host::image::chain::Chain;
use d4c_host::mount::cache::ContentCache;
use d4c_host::mount::{self, MountOptions};

use crate::output::parse_size;

/// Set in the daemon's environment: print "ready" on stdout once mounted.
const NOTIFY_ENV: &str = "D4C_MOUNT_NOTIFY";

/// `d4c mount`.
#[derive(Args)]
pub struct MountArgs {
    /// A full image, then deltas in order (files, or a stored image's name),
    /// then the mount point.
    #[arg(required = true, num_args = 2.., value_name = "IMG.cdimg [DELTA.cdimg ...] MOUNTPOINT")]
    args: Vec<PathBuf>,
    /// Where rebuilt files are cached [default: $D4C_HOME/cache/content].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Bound on the cache's size (least recently used files leave first).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    cache_size: u64,
    /// Return once mounted, serving from a background process.
    #[arg(long)]
    daemon: bool,
    /// The daemon's log [default: CACHE_DIR/../mount.log].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Threads serving requests.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Let the image's setuid bits and device nodes act (mounted `suid,dev`).
    /// Without it a mount is `nosuid,nodev`: as root it is readable by every
    /// local user, who must not gain the image's setuid-root programs.
    #[arg(long)]
    suid_dev: bool,
    /// With --daemon: one JSON object on stdout once mounted.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    codecs: crate::CodecArgs,
}

/// `d4c umount`.
#[derive(Args)]
pub struct UmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn umount(a: &UmountArgs) -> Result<()> {
    mount::unmount(&a.mountpoint)?;
    if a.json {
        return crate::output::print_json(&serde_json::json!({ "unmounted": a.mountpoint }));
    }
    println!("unmounted {}", a.mountpoint.display());
    Ok(())
}

pub fn run(a: &MountArgs) -> Result<()> {
    let (mountpoint, images) = a.args.split_last().expect("clap: at least 2");
    let cache_dir = a.cache_dir.clone().unwrap_or_else(home::content_cache_dir);
    if a.daemon {
        let log = a
            .log
            .clone()
            .unwrap_or_else(|| cache_dir.with_file_name("mount.log"));
        return daemonize(mountpoint, &log, a.json);
    }
    // Before any thread exists, so that every thread inherits the mask and the
    // signals wait for `sigtimedwait` below.
    let signals = block_signals();
    let chain = Chain::open(&crate::store_cmd::expand(images)?)?;
    let codecs = a.codecs.codecs()?;
    let cache = Arc::new(ContentCache::open(&cache_dir, a.cache_size)?);
    let id = chain.top().image_id;
    let m = mount::mount(
        chain,
        codecs,
        cache,
        mountpoint,
        &MountOptions {
            threads: a.threads,
            suid_dev: a.suid_dev,
        },
    )?;
    eprintln!(
        "d4c: image {} mounted at {}",
        id.short(),
        m.mountpoint().display()
    );
    if std::env::var_os(NOTIFY_ENV).is_some() {
        println!("ready");
        // The parent stops reading; nothing more goes to that pipe.
        redirect_stdout_to_null();
    }
    loop {
        if m.is_finished() {
            eprintln!("d4c: {} was unmounted", m.mountpoint().display());
            return m.join();
        }
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(250)) {
            eprintln!("d4c: signal {sig}, unmounting {}", m.mountpoint().display());
            return m.unmount();
        }
    }
}

/// Runs this command again without `--daemon` in a new session, its output in
/// `log`, and returns once it reports the mount ready (or fails, with its error).
fn daemonize(mountpoint: &std::path::Path, log: &std::path::Path, json: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        d4c_host::fsutil::create_dir_all(dir)?;
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))?;
    let start = logf.metadata()?.len();
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our
    // terminal and process group.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() == "ready" {
        if json {
            return crate::output::print_json(&serde_json::json!({
                "mountpoint": mountpoint,
                "pid": child.id(),
                "log": log,
            }));
        }
        println!(
            "mounted at {} (pid {}, log {})",
            mountpoint.display(),
            child.id(),
            log.display()
        );
        return Ok(());
    }
    let status = child.wait()?;
    let text = std::fs::read(log).unwrap_or_default();
    let new = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]).into_owned();
    let why = new
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("d4c: error: ").to_string())
        .unwrap_or_else(|| format!("the mount daemon exited with {status}"));
    bail!("{why}")
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; no siginfo wanted.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn redirect_stdout_to_null() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}
