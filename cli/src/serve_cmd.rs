//! `d4c serve`: the update server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::codec::{CodecStore, Codecs};
use d4c_server::http::{router, Server};
use d4c_server::negotiate::Negotiator;
use d4c_server::store::Store;

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
    #[command(flatten)]
    jobs: crate::image_cmd::Jobs,
}

pub fn run(cli: &Cli, a: &ServeArgs) -> Result<()> {
    let store = Arc::new(Store::open(&a.store)?);
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
