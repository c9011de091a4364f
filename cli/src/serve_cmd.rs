//! `d4c serve`: the update server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::codec::{CodecStore, Codecs};
use d4c_server::http::{router, Server};
use d4c_server::negotiate::Negotiator;
use d4c_server::store::{Limits, Store};

use crate::Cli;

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
    #[command(flatten)]
    jobs: crate::image_cmd::Jobs,
}

pub fn run(cli: &Cli, a: &ServeArgs) -> Result<()> {
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
    let codecs = Codecs::new(cli.runtime()?, CodecStore::new(store.codec_dir()));
    let server = Arc::new(Server {
        negotiator: Negotiator::new(store.clone(), codecs, a.jobs.threads, a.max_merges),
        store: store.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if a.gc_interval > 0 {
        let every = std::time::Duration::from_secs(a.gc_interval * 60);
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
        println!(
            "d4c serve: listening on http://{addr} (store {})",
            a.store.display()
        );
        std::io::stdout().flush()?;
        axum::serve(listener, router(server))
            .with_graceful_shutdown(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            })
            .await
            .context("serving")
    })
}

/// One garbage collection, logged when it removed anything.
fn collect_garbage(store: &Store) {
    match store.collect_garbage() {
        Ok(c) if c.blobs + c.merged + c.uploads > 0 => eprintln!(
            "d4c serve: removed {} unreferenced blob(s), {} stale merge(s), {} abandoned upload(s): {} bytes",
            c.blobs, c.merged, c.uploads, c.bytes
        ),
        Ok(_) => {}
        Err(e) => eprintln!("d4c serve: garbage collection: {e:#}"),
    }
}
