//! The mount manager: the process that serves the snapshotter's FUSE mounts,
//! apart from the snapshotter itself, so that restarting or upgrading the
//! snapshotter leaves the files of running containers readable (a FUSE mount
//! lives as long as the process serving it). The design of stargz's
//! fusemanager: one long-lived process, one content cache, one codec runtime;
//! the snapshotter asks it over a unix socket, one JSON line per request and
//! per answer.
//!
//! The snapshotter starts the manager when none answers on its socket
//! (`d4c-snapshotter --mount-manager`, in a process group of its own). The
//! manager exits once it serves no mount and no snapshotter is connected.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use d4c_host::codec::Codecs;
use d4c_host::image::chain::Chain;
use d4c_host::mount::cache::ContentCache;
use d4c_host::mount::{self, Mount, MountOptions};
use serde::{Deserialize, Serialize};

use crate::log::{log, Level};

/// Largest request or answer line.
const MAX_LINE: usize = 1 << 20;
/// How long an idle manager (no mount, no client) waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A request to the manager.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    /// Serve the image `chain` yields at `mountpoint` (nothing to do if it
    /// already does, with the same chain).
    Mount {
        chain: Vec<PathBuf>,
        mountpoint: PathBuf,
    },
    /// Stop serving `mountpoint`.
    Unmount { mountpoint: PathBuf },
    /// The mount points served.
    List,
}

/// An answer.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mountpoints: Vec<PathBuf>,
}

/// The mounts a manager serves, with the chain each was asked for.
struct Served {
    mounts: HashMap<PathBuf, (Vec<PathBuf>, Mount)>,
}

/// The manager's side.
pub struct Manager {
    codecs: Codecs,
    cache: Arc<ContentCache>,
    served: Mutex<Served>,
    clients: AtomicUsize,
}

impl Manager {
    /// A manager mounting with `codecs` and the shared content `cache`.
    pub fn new(codecs: Codecs, cache: Arc<ContentCache>) -> Arc<Manager> {
        Arc::new(Manager {
            codecs,
            cache,
            served: Mutex::new(Served {
                mounts: HashMap::new(),
            }),
            clients: AtomicUsize::new(0),
        })
    }

    /// Serves on `socket` (owner-only) until idle, when `exit_when_idle`;
    /// else forever (in a thread, for tests).
    pub fn serve(self: &Arc<Self>, socket: &Path, exit_when_idle: bool) -> Result<()> {
        let listener = bind(socket)?;
        if exit_when_idle {
            let me = self.clone();
            std::thread::spawn(move || me.exit_when_idle());
        }
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let me = self.clone();
            me.clients.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = me.session(conn);
                me.clients.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    }

    fn exit_when_idle(&self) {
        let mut idle_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let serving = {
                let mut served = self.served.lock().expect("served lock");
                // Mounts unmounted from outside (`umount`, a reboot's) are over.
                served.mounts.retain(|_, (_, m)| !m.is_finished());
                !served.mounts.is_empty()
            };
            let busy = self.clients.load(Ordering::SeqCst) > 0 || serving;
            if busy {
                idle_since = Instant::now();
            } else if idle_since.elapsed() > IDLE_EXIT {
                log(Level::Info, "mount manager: idle, exiting");
                std::process::exit(0);
            }
        }
    }

    /// One client: a request per line, an answer per line.
    fn session(&self, conn: UnixStream) -> Result<()> {
        let mut out = conn.try_clone()?;
        let mut lines = BufReader::new(conn);
        loop {
            let Some(line) = read_line(&mut lines)? else {
                return Ok(());
            };
            let answer = match serde_json::from_str::<Request>(&line) {
                Ok(req) => self.handle(req),
                Err(e) => Answer {
                    error: Some(format!("bad request: {e}")),
                    ..Answer::default()
                },
            };
            let mut bytes = serde_json::to_vec(&answer)?;
            bytes.push(b'\n');
            out.write_all(&bytes)?;
        }
    }

    fn handle(&self, req: Request) -> Answer {
        let result = match req {
            Request::Mount { chain, mountpoint } => self.mount(chain, mountpoint),
            Request::Unmount { mountpoint } => self.unmount(&mountpoint),
            Request::List => {
                let served = self.served.lock().expect("served lock");
                return Answer {
                    mountpoints: served.mounts.keys().cloned().collect(),
                    ..Answer::default()
                };
            }
        };
        Answer {
            error: result.err().map(|e| format!("{e:#}").replace('\n', " ")),
            ..Answer::default()
        }
    }

    fn mount(&self, chain: Vec<PathBuf>, mountpoint: PathBuf) -> Result<()> {
        let mut served = self.served.lock().expect("served lock");
        if let Some((c, m)) = served.mounts.get(&mountpoint) {
            if !m.is_finished() {
                anyhow::ensure!(*c == chain, "{} serves another image", mountpoint.display());
                return Ok(());
            }
            served.mounts.remove(&mountpoint);
        }
        let opened = Chain::open(&chain)?;
        // Fail now, not at first read, if a codec the chain names is missing.
        for layer in opened.layers() {
            for c in &layer.header().codecs {
                self.codecs.get(&c.sha256, &c.name)?;
            }
        }
        let m = mount::mount(
            opened,
            self.codecs.clone(),
            self.cache.clone(),
            &mountpoint,
            // Containers keep their setuid programs and devices; the mount
            // points live under the snapshotter's root-only directory.
            &MountOptions {
                suid_dev: true,
                ..MountOptions::default()
            },
        )?;
        served.mounts.insert(mountpoint, (chain, m));
        Ok(())
    }

    fn unmount(&self, mountpoint: &Path) -> Result<()> {
        let m = self
            .served
            .lock()
            .expect("served lock")
            .mounts
            .remove(mountpoint);
        let Some((_, m)) = m else {
            return Ok(());
        };
        // A mount still in use is detached lazily and served until its last
        // file closes: wait for that only briefly.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(m.unmount()));
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    /// Unmounts everything (a test's "node reboot").
    pub fn unmount_all(&self) {
        let all: Vec<_> = self
            .served
            .lock()
            .expect("served lock")
            .mounts
            .drain()
            .collect();
        for (p, (_, m)) in all {
            if let Err(e) = m.unmount() {
                log(Level::Error, &format!("unmounting {}: {e:#}", p.display()));
            }
        }
    }
}

/// Binds `socket` owner-only, replacing a stale one.
fn bind(socket: &Path) -> Result<UnixListener> {
    if UnixStream::connect(socket).is_ok() {
        bail!("a mount manager already serves {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}

fn read_line(r: &mut impl BufRead) -> Result<Option<String>> {
    let mut line = String::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    anyhow::ensure!(line.ends_with('\n'), "line too long or cut short");
    Ok(Some(line))
}

/// How the snapshotter starts a manager when none answers.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program and its arguments.
    pub command: Vec<std::ffi::OsString>,
    /// Where its stderr goes (appended).
    pub log: PathBuf,
}

/// The snapshotter's side: one connection, re-made (and the manager started
/// again) if it breaks.
pub struct Mounts {
    socket: PathBuf,
    launch: Option<Launch>,
    conn: Mutex<Option<(BufReader<UnixStream>, UnixStream)>>,
}

impl Mounts {
    /// A client of the manager on `socket`, starting it with `launch` if
    /// none answers (`None`: it must already run).
    pub fn new(socket: &Path, launch: Option<Launch>) -> Mounts {
        Mounts {
            socket: socket.to_path_buf(),
            launch,
            conn: Mutex::new(None),
        }
    }

    /// Serves the image `chain` yields at `mountpoint`; nothing to do if
    /// the manager already does (a restarted snapshotter finds its mounts).
    pub fn mount(&self, chain: &[PathBuf], mountpoint: &Path) -> Result<()> {
        self.ask(&Request::Mount {
            chain: chain.to_vec(),
            mountpoint: mountpoint.to_path_buf(),
        })
        .map(|_| ())
    }

    /// Stops serving `mountpoint`.
    pub fn unmount(&self, mountpoint: &Path) -> Result<()> {
        self.ask(&Request::Unmount {
            mountpoint: mountpoint.to_path_buf(),
        })
        .map(|_| ())
    }

    /// The mount points served.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        self.ask(&Request::List).map(|a| a.mountpoints)
    }

    fn ask(&self, req: &Request) -> Result<Answer> {
        let mut conn = self.conn.lock().expect("manager connection");
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        // A broken connection (the manager restarted) is made again once.
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.connect()?);
            }
            let (reader, writer) = conn.as_mut().expect("connected");
            let answer = writer
                .write_all(&line)
                .map_err(anyhow::Error::from)
                .and_then(|()| read_line(reader)?.context("the mount manager hung up"));
            match answer {
                Ok(text) => {
                    let a: Answer =
                        serde_json::from_str(&text).context("the mount manager's answer")?;
                    return match a.error {
                        Some(e) => Err(anyhow!(e)),
                        None => Ok(a),
                    };
                }
                Err(e) if attempt == 1 => return Err(e.context("asking the mount manager")),
                Err(_) => *conn = None,
            }
        }
        unreachable!("two attempts")
    }

    fn connect(&self) -> Result<(BufReader<UnixStream>, UnixStream)> {
        let stream = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e) => {
                let Some(launch) = &self.launch else {
                    return Err(e)
                        .with_context(|| format!("no mount manager on {}", self.socket.display()));
                };
                self.start(launch)?
            }
        };
        Ok((BufReader::new(stream.try_clone()?), stream))
    }

    /// Starts a manager in its own process group (signals to the
    /// snapshotter's group do not reach it) and waits for its socket.
    fn start(&self, launch: &Launch) -> Result<UnixStream> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("opening {}", launch.log.display()))?;
        let (program, args) = launch.command.split_first().context("empty command")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the mount manager")?;
        let t = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                // Reaped by whoever outlives it: not this process's child
                // for long (it is meant to outlive us).
                std::thread::spawn(move || child.wait());
                return Ok(s);
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the mount manager exited ({status}); see {}",
                    launch.log.display()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                bail!(
                    "the mount manager did not start; see {}",
                    launch.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
