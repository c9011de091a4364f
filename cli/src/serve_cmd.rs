//! `d4c serve`: the update server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::codec::{CodecStore, Codecs};
use d4c_server::auth::{Auth, Scheme};
use d4c_server::http::{router, Server};
use d4c_server::negotiate::Negotiator;
use d4c_server::store::{Limits, Store};
use d4c_server::tls;

/// `d4c serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The directory the server keeps everything in.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Largest blob a client may upload.
    #[arg(long, value_name = "SIZE", value_parser = crate::output::parse_size, default_value = "16G")]
    max_upload: u64,
    /// Hours after which an upload nobody writes to is removed.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    upload_ttl: u64,
    /// Most the store's blobs and uploads may take; uploads past it are refused.
    #[arg(long, value_name = "SIZE", value_parser = crate::output::parse_size)]
    quota: Option<u64>,
    /// Days a merged or compact delta is kept after it was last asked for.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    merged_ttl: u64,
    /// Minutes between garbage collections (unreferenced blobs, stale merges,
    /// abandoned uploads); 0: only at start.
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    gc_interval: u64,
    /// Merges (or compact encodings) run at once; more requests wait.
    #[arg(long, value_name = "N", default_value_t = 2)]
    max_merges: usize,
    /// Users who may log in (bcrypt, as `htpasswd -B` writes). Without it,
    /// anyone who reaches the server may push: keep it on a trusted network.
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// How users log in: `basic` (the password on every request) or `token`
    /// (traded once for a bearer token at /d4c/v1/token).
    #[arg(
        long,
        value_name = "SCHEME",
        default_value = "token",
        requires = "htpasswd"
    )]
    auth: AuthScheme,
    /// Let anyone read (blobs, manifests, pulls); writing still needs a login.
    #[arg(long, requires = "htpasswd")]
    anonymous_read: bool,
    /// Serve HTTPS with this PEM certificate chain (and --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    jobs: crate::image_cmd::Jobs,
    #[command(flatten)]
    codecs: crate::CodecLimits,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: keep it
    /// on loopback or a private network; docs/CLI.md lists them).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    log: crate::LogArgs,
}

/// `--auth`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AuthScheme {
    Basic,
    Token,
}

pub fn run(a: &ServeArgs) -> Result<()> {
    // A server outlives its clients' connections: a write to one a client
    // closed (`writev` sends no MSG_NOSIGNAL) must be an error for that
    // connection, not SIGPIPE for the process (main restores the default for
    // the CLI's own output).
    // SAFETY: setting a signal's disposition before the runtime starts threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    a.log.init()?;
    let auth = match &a.htpasswd {
        None => None,
        Some(f) => {
            let scheme = match a.auth {
                AuthScheme::Basic => Scheme::Basic,
                AuthScheme::Token => Scheme::Token,
            };
            Some(Auth::from_htpasswd(f, scheme, a.anonymous_read)?)
        }
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::config(c, k)?),
        _ => None,
    };
    if auth.is_some() && tls.is_none() && !loopback(&a.listen) {
        anyhow::bail!(
            "--htpasswd without --tls-cert would take passwords in clear on {}; serve TLS, or listen on loopback behind a TLS proxy",
            a.listen
        );
    }
    let hours = |h: u64| std::time::Duration::from_secs(h.saturating_mul(3600));
    let limits = Limits {
        max_upload: a.max_upload,
        upload_ttl: hours(a.upload_ttl),
        quota: a.quota,
        merged_ttl: hours(a.merged_ttl.saturating_mul(24)),
        ..Limits::default()
    };
    let store = Arc::new(Store::open_with(&a.store, limits)?);
    collect_garbage(&store);
    let codecs = Codecs::new(a.codecs.runtime()?, CodecStore::new(store.codec_dir()));
    let server = Arc::new(Server {
        negotiator: Negotiator::new(store.clone(), codecs, a.jobs.threads, a.max_merges),
        store: store.clone(),
        auth,
        tls: tls.is_some(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if a.gc_interval > 0 {
        let every = std::time::Duration::from_secs(a.gc_interval.saturating_mul(60));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || collect_garbage(&s)).await;
            }
        });
    }
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let stop = shutdown()?;
        println!(
            "d4c serve: listening on {}://{addr} (store {})",
            if tls.is_some() { "https" } else { "http" },
            a.store.display()
        );
        // After the first line, which says where the server listens.
        if let Some(m) = &a.metrics_listen {
            let bound = d4c_host::metrics::serve(m)?;
            // Logged, not printed: whoever read the first line may be gone.
            tracing::info!("metrics on http://{bound}/metrics");
        }
        std::io::stdout().flush()?;
        d4c_host::notify::ready()?;
        let app = router(server);
        match tls {
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
        .context("serving")
    })
}

/// A future that resolves on SIGTERM or SIGINT, the handlers installed now
/// (before the server says it is ready: a signal right after that stops it
/// gracefully instead of killing it).
fn shutdown() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Whether `listen` (`host:port`) is a loopback address.
fn loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
        || listen.starts_with("localhost:")
}

/// One garbage collection, logged when it removed anything.
fn collect_garbage(store: &Store) {
    match store.collect_garbage() {
        Ok(c) if c.blobs + c.merged + c.uploads > 0 => {
            tracing::info!(
            "removed {} unreferenced blob(s), {} stale merge(s), {} abandoned upload(s): {} bytes",
            c.blobs, c.merged, c.uploads, c.bytes
        )
        }
        Ok(_) => {}
        Err(e) => tracing::error!("garbage collection: {e:#}"),
    }
}
