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
    #[command(flatten)]
    jobs: crate::image_cmd::Jobs,
}

pub fn run(cli: &Cli, a: &ServeArgs) -> Result<()> {
    let limits = Limits {
        max_upload: a.max_upload,
        upload_ttl: std::time::Duration::from_secs(a.upload_ttl * 3600),
    };
    let store = Arc::new(Store::open_with(&a.store, limits)?);
    let codecs = Codecs::new(cli.runtime()?, CodecStore::new(store.codec_dir()));
    let server = Arc::new(Server {
        negotiator: Negotiator::new(store.clone(), codecs, a.jobs.threads),
        store,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
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
