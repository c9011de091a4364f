//! `d4c-snapshotter`: containerd's snapshots API on a unix socket, for use as a
//! proxy plugin (`[proxy_plugins.d4c]`, see docs/SNAPSHOTTER.md). Serves until
//! SIGTERM or SIGINT. Its image mounts are served by the mount manager
//! (`--mount-manager`, started on demand), which outlives it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};
use d4c_host::mount::cache::ContentCache;
use d4c_host::registry::ConnectOptions;
use d4c_host::units::parse_size;
use d4c_snapshotter::api::snapshots::snapshots_server::SnapshotsServer;
use d4c_snapshotter::config::{containerd_logins, Config};
use d4c_snapshotter::log::{log, Level};
use d4c_snapshotter::mounts::{Launch, Manager, Mounts};
use d4c_snapshotter::remote::RemoteOptions;
use d4c_snapshotter::service::Service;
use d4c_snapshotter::snapshotter::Snapshotter;

#[derive(Parser)]
#[command(
    name = "d4c-snapshotter",
    version,
    about = "containerd proxy snapshotter for d4c images"
)]
struct Flags {
    /// Configuration file (TOML); flags override it.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// State directory: metadata, snapshots, stored images, caches
    /// [default: /var/lib/d4c-snapshotter].
    #[arg(long)]
    root: Option<PathBuf>,
    /// The unix socket to serve on [default: /run/d4c-snapshotter/snapshotter.sock].
    #[arg(long)]
    address: Option<PathBuf>,
    /// Bound on the cache of rebuilt file contents [default: 10G].
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Memory cap for each codec call [default: 3G].
    #[arg(long, value_parser = parse_size)]
    codec_memory: Option<u64>,
    /// Time cap for each codec call, in seconds [default: 600].
    #[arg(long)]
    codec_timeout: Option<u64>,
    /// Images kept per repository after containerd removed them, as bases for
    /// the next update pulled through containerd's CRI plugin [default: 2].
    #[arg(long)]
    keep_per_repository: Option<usize>,
    /// PEM file of CA certificates to trust for registries instead of the
    /// built-in roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// error, warn, info or debug [default: info]; RUST_LOG, when set, says
    /// more precisely (containerd's gRPC libraries included).
    #[arg(long, value_enum)]
    log_level: Option<Level>,
    /// text, or json (one object per line) [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<d4c_host::log::Format>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: keep it
    /// on loopback or a private network).
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<String>,
    /// A d4c image store (e.g. /root/.local/share/d4c/images, filled by
    /// `d4c pull`) whose images updates may start from too.
    #[arg(long, value_name = "DIR")]
    shared_store: Option<PathBuf>,
    /// Run as the mount manager of `--root` (the snapshotter starts it).
    #[arg(long, hide = true)]
    mount_manager: bool,
}

/// Read when it exists, if no other `--config` is named.
const DEFAULT_CONFIG: &str = "/etc/d4c/snapshotter.toml";
/// containerd's config, whose CRI registry logins are used when it exists.
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The settings in force: flags, else the configuration file, else defaults.
struct Args {
    root: PathBuf,
    address: PathBuf,
    cache_size: u64,
    codec_memory: u64,
    codec_timeout: u64,
    remote: RemoteOptions,
    mount_manager: bool,
    log_level: Level,
    log_format: d4c_host::log::Format,
    metrics_address: Option<String>,
}

impl Args {
    fn resolve(f: Flags) -> Result<Args> {
        let c = match f.config.exists() || f.config != Path::new(DEFAULT_CONFIG) {
            true => Config::load(&f.config)?,
            false => Config::default(),
        };
        let size = |flag: Option<u64>, file: Option<&String>, default: &str| -> Result<u64> {
            match (flag, file) {
                (Some(v), _) => Ok(v),
                (None, Some(s)) => {
                    parse_size(s).map_err(|e| anyhow::anyhow!("{}: {e}", f.config.display()))
                }
                (None, None) => parse_size(default).map_err(anyhow::Error::msg),
            }
        };
        let log_format = match (f.log_format, &c.log_format) {
            (Some(v), _) => v,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: log_format {e}", f.config.display()))?,
            (None, None) => d4c_host::log::Format::Text,
        };
        let mut remote = RemoteOptions {
            connect: ConnectOptions {
                ca_cert: f.ca_cert.or(c.registry.ca_cert),
                auth_file: c.registry.auth_file,
                ..ConnectOptions::default()
            },
            keep_per_repository: f.keep_per_repository.or(c.keep_per_repository).unwrap_or(2),
            shared_store: f.shared_store.or(c.shared_store),
            ..RemoteOptions::default()
        };
        remote.mirrors = c
            .registry
            .mirrors
            .into_iter()
            .map(|(host, m)| (host, m.endpoints))
            .collect();
        remote.logins = match c.registry.containerd_config {
            Some(path) => containerd_logins(&path)?,
            None if Path::new(CONTAINERD_CONFIG).exists() => {
                containerd_logins(Path::new(CONTAINERD_CONFIG)).unwrap_or_else(|e| {
                    log(Level::Warn, &format!("registry logins: {e:#}"));
                    Default::default()
                })
            }
            None => Default::default(),
        };
        Ok(Args {
            root: f
                .root
                .or(c.root)
                .unwrap_or_else(|| "/var/lib/d4c-snapshotter".into()),
            address: f
                .address
                .or(c.address)
                .unwrap_or_else(|| "/run/d4c-snapshotter/snapshotter.sock".into()),
            cache_size: size(f.cache_size, c.cache_size.as_ref(), "10G")?,
            codec_memory: size(f.codec_memory, c.codec.memory.as_ref(), "3G")?,
            codec_timeout: f.codec_timeout.or(c.codec.timeout).unwrap_or(600),
            remote,
            mount_manager: f.mount_manager,
            log_level: f.log_level.or(c.log_level).unwrap_or(Level::Info),
            log_format,
            metrics_address: f.metrics_address.or(c.metrics_address),
        })
    }

    fn codecs(&self) -> Result<Codecs> {
        let limits = Limits {
            memory: self.codec_memory,
            time: Duration::from_secs(self.codec_timeout),
        };
        let runtime = Runtime::new(limits, Some(self.root.join("cache").join("compiled")))?;
        Ok(Codecs::new(
            runtime,
            CodecStore::new(self.root.join("codecs")),
        ))
    }

    /// The mount manager of this root, started as this program with the same
    /// caps when none answers.
    fn mounts(&self) -> Result<Mounts> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut command: Vec<OsString> = vec![exe.into(), "--mount-manager".into()];
        command.extend(["--root".into(), self.root.clone().into_os_string()]);
        for (flag, value) in [
            ("--cache-size", self.cache_size),
            ("--codec-memory", self.codec_memory),
            ("--codec-timeout", self.codec_timeout),
        ] {
            command.extend([flag.into(), value.to_string().into()]);
        }
        let launch = Launch {
            command,
            log: self.root.join("mount-manager.log"),
        };
        Ok(Mounts::new(&self.root.join(MANAGER_SOCKET), Some(launch)))
    }
}

/// The mount manager's socket, in the root.
const MANAGER_SOCKET: &str = "mounts.sock";

/// `--mount-manager`: serves mounts until idle.
fn manage_mounts(args: &Args) -> Result<()> {
    let cache = Arc::new(ContentCache::open(
        &args.root.join("cache").join("content"),
        args.cache_size,
    )?);
    let manager = Manager::new(args.codecs()?, cache);
    manager.serve(&args.root.join(MANAGER_SOCKET), true)
}

async fn run(args: Args) -> Result<()> {
    d4c_host::fsutil::create_private_dir(&args.root)?;
    let args = Args {
        root: args.root.canonicalize()?,
        ..args
    };
    if args.mount_manager {
        return tokio::task::spawn_blocking(move || manage_mounts(&args)).await?;
    }
    if let Some(addr) = &args.metrics_address {
        let bound = d4c_host::metrics::serve(addr)?;
        log(Level::Info, &format!("metrics on http://{bound}/metrics"));
    }
    let codecs = args.codecs()?;
    let mounts = args.mounts()?;
    let root = args.root.clone();
    let remote = args.remote.clone();
    let snapshotter = tokio::task::spawn_blocking(move || {
        Snapshotter::open(&root, codecs, mounts).map(|s| s.with_remote(remote))
    })
    .await??;
    let snapshotter = Arc::new(snapshotter);

    // A directory of its own is made private; an existing one (say /run) is
    // left as it is: the socket's own mode guards it.
    match args.address.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
            d4c_host::fsutil::create_private_dir(dir)?
        }
        _ => {}
    }
    // A socket left by an earlier process: nobody answers on it any more.
    if args.address.exists() {
        std::fs::remove_file(&args.address)
            .with_context(|| format!("removing stale socket {}", args.address.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&args.address)
        .with_context(|| format!("listening on {}", args.address.display()))?;
    // Whoever can talk to the socket can make root mount images: owner only,
    // whatever the umask made of it.
    std::fs::set_permissions(
        &args.address,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .with_context(|| format!("restricting {}", args.address.display()))?;
    eprintln!(
        "d4c-snapshotter: serving {} on {}",
        snapshotter.root().display(),
        args.address.display()
    );
    // The handlers are in place before READY=1: a SIGTERM right after it
    // stops the server instead of killing it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    d4c_host::notify::ready()?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("d4c-snapshotter: shutting down");
    };
    let served = tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Service::new(snapshotter.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(&args.address);
    served.context("serving gRPC")
}

fn main() -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("d4c-snapshotter: {}", line.trim());
            return ExitCode::from(2);
        }
    };
    let args = match Args::resolve(flags) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "d4c-snapshotter: error: {}",
                format!("{e:#}").replace('\n', " ")
            );
            return ExitCode::from(2);
        }
    };
    if let Err(e) = d4c_host::log::init(args.log_level.as_str(), args.log_format) {
        eprintln!("d4c-snapshotter: error: {e:#}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("d4c-snapshotter: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "d4c-snapshotter: error: {}",
                format!("{e:#}").replace('\n', " ")
            );
            ExitCode::FAILURE
        }
    }
}
