//! `d4c push` and `d4c pull`: registries and the update server.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::codec::Codecs;
use d4c_host::digest::Digest;
use d4c_host::home;
use d4c_host::image::builder::Platform;
use d4c_host::image::format::{ImageKind, Reader};
use d4c_host::image::store::{ImageStore, StoreLock, StoredImage, MAX_CHAIN};
use d4c_host::registry::artifact::Item;
use d4c_host::registry::auth::Credentials;
use d4c_host::registry::{ConnectOptions, Reference, Registry};
use d4c_host::update::pull::{self, PullOptions, PullReport, Source};
use d4c_host::update::push::SentCodec;
use d4c_host::update::{attach, push};

use crate::bar::Bar;
use crate::output::{human_bytes, parse_size, print_json};

/// How to reach a registry or server (skopeo's flags).
#[derive(Args)]
pub struct Connection {
    /// PEM file of CA certificates to trust instead of the built-in roots.
    #[arg(long, value_name = "FILE", env = "D4C_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Log in as USER:PASSWORD (else the auth files, D4C_REGISTRY_USER and
    /// D4C_REGISTRY_PASSWORD).
    #[arg(long, value_name = "USER:PASSWORD", value_parser = parse_creds)]
    creds: Option<Credentials>,
    /// A docker/containers auth file to look logins up in first.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// A directory of certificates for the registry: `*.crt` CAs to trust, a
    /// `NAME.cert` and `NAME.key` client pair [default:
    /// /etc/containers/certs.d/HOST[:PORT], else /etc/docker/certs.d/...].
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Require HTTPS and verify the registry's certificate [default: true];
    /// false accepts any certificate and falls back to plain HTTP (a test
    /// registry off loopback).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
}

fn parse_creds(s: &str) -> Result<Credentials, String> {
    match s.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Err("want USER:PASSWORD".to_string()),
    }
}

impl Connection {
    /// The options these flags ask for.
    pub fn options(&self, limit_rate: Option<u64>) -> ConnectOptions {
        ConnectOptions {
            ca_cert: self.ca_cert.clone(),
            limit_rate,
            credentials: self.creds.clone(),
            auth_file: self.authfile.clone(),
            cert_dir: self.cert_dir.clone(),
            insecure: !self.tls_verify,
        }
    }

    fn connect(&self, r: &Reference, limit_rate: Option<u64>) -> Result<Registry> {
        Registry::connect(r, &self.options(limit_rate))
    }
}

/// `d4c push`.
#[derive(Args)]
pub struct PushArgs {
    /// The cdimg to push (a full image or a delta), or a stored image's name
    /// (its chain's files, the last one tagged).
    file: PathBuf,
    /// Where: `HOST[:PORT]/REPO[:TAG]` (a registry or a d4c update server).
    reference: String,
    /// Attach the cdimg to the ordinary image REPO:TAG names (the image it was
    /// converted from, or the new image of a delta) instead of tagging it: the
    /// tag stays that image for docker, skopeo and containerd.
    #[arg(long)]
    attach: bool,
    /// Print what was pushed as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    codecs: crate::CodecArgs,
}

/// `d4c pull`.
#[derive(Args)]
pub struct PullArgs {
    /// `HOST[:PORT]/REPO:TAG`, or `REPO:TAG` with --server.
    reference: String,
    /// Ask this d4c update server (http://HOST:PORT, or HOST:PORT) to choose
    /// and merge the update.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A full image file this machine holds (repeatable): updates may start
    /// from it, as from the images in the local store.
    #[arg(long, value_name = "IMG.cdimg")]
    have: Vec<PathBuf>,
    /// The codecs this machine holds, by name or sha256 [default: the built-ins and the store].
    #[arg(long, value_delimiter = ',', value_name = "NAME|SHA256,...")]
    codecs: Option<Vec<String>>,
    /// Never fetch a codec component: take only updates the held codecs decode.
    #[arg(long)]
    no_fetch_codecs: bool,
    /// Write a full image even when a delta from a held image would do.
    #[arg(long)]
    full: bool,
    /// Print the plan and its bytes; download nothing.
    #[arg(long)]
    dry_run: bool,
    /// Cap the download speed (bytes per second, e.g. 5M).
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    limit_rate: Option<u64>,
    /// The cdimg to write: the image, or a delta from the --have image it
    /// starts from [default: into the local store, as HOST/REPO:TAG, from
    /// the images it holds].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Where the tag is a multi-platform image: the platform to pull,
    /// OS/ARCH[/VARIANT] [default: this machine's].
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    /// zstd level for content rebuilt while assembling.
    #[arg(long, default_value_t = 19)]
    level: i32,
    #[command(flatten)]
    jobs: crate::image_cmd::Jobs,
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    codec_args: crate::CodecArgs,
}

/// "full image ID" or "delta BASE -> ID".
fn describe(it: &Item) -> String {
    match it.kind {
        ImageKind::Image => format!("full image {}", it.image_id.short()),
        ImageKind::Delta => format!(
            "delta {} -> {}",
            it.base_id.map(|b| b.short()).unwrap_or_default(),
            it.image_id.short()
        ),
    }
}

pub fn push(a: &PushArgs) -> Result<()> {
    let r = Reference::parse(&a.reference)?;
    let files = crate::store_cmd::expand(std::slice::from_ref(&a.file))?;
    let (top, below) = files.split_last().expect("one argument, one or more files");
    if a.attach {
        return attach(a, top, &r);
    }
    let tag = match r.tag {
        Some(_) => Some(r.require_tag()?),
        None if r.digest.is_some() => anyhow::bail!("{r}: push names a tag, not a digest"),
        None => None,
    };
    let reg = a.conn.connect(&r, None)?;
    let codecs = a.codecs.codecs()?;
    // A stored chain: the files below the top go in untagged, so the tag's
    // delta has its base in the repository.
    let mut below_reports = Vec::new();
    for f in below {
        below_reports.push(push::push(&reg, f, None, &codecs, &Bar::new())?);
    }
    let report = push::push(&reg, top, tag, &codecs, &Bar::new())?;
    if a.json {
        let mut v = d4c_host::digest::in_oci_form(|| serde_json::to_value(&report))?;
        if !below_reports.is_empty() {
            v["below"] = d4c_host::digest::in_oci_form(|| serde_json::to_value(&below_reports))?;
        }
        return print_json(&v);
    }
    for b in &below_reports {
        let what = format!("pushed {} to {r} (untagged)", describe(&b.item));
        print_sent(&what, &b.item, b.uploaded, &b.codecs);
    }
    let what = format!("pushed {} to {r}", describe(&report.item));
    print_sent(&what, &report.item, report.uploaded, &report.codecs);
    Ok(())
}

/// What a push sent: the cdimg and its codecs, each uploaded or already there.
fn print_sent(what: &str, it: &Item, uploaded: bool, codecs: &[SentCodec]) {
    let sent = |b: bool| if b { "uploaded" } else { "already there" };
    println!("{what}: {} ({})", human_bytes(it.size), sent(uploaded));
    for c in codecs {
        println!(
            "  codec {} {} ({}, {})",
            c.codec.name,
            c.codec.digest.short(),
            human_bytes(c.codec.size),
            sent(c.uploaded)
        );
    }
}

/// `d4c push --attach`.
fn attach(a: &PushArgs, file: &std::path::Path, r: &Reference) -> Result<()> {
    let tag = r.require_tag()?;
    let reg = a.conn.connect(r, None)?;
    let codecs = a.codecs.codecs()?;
    let report = attach::attach(&reg, file, tag, &codecs, &Bar::new())?;
    if a.json {
        return print_json(&report);
    }
    let what = format!(
        "attached {} to {r} ({})",
        describe(&report.item),
        report.subject.oci()
    );
    print_sent(&what, &report.item, report.uploaded, &report.codecs);
    if let Some(t) = &report.fallback_tag {
        println!("  listed under the referrers tag {t} (the registry has no referrers API)");
    }
    Ok(())
}

/// The codecs `--codecs` names, or every codec held.
fn held_codecs(a: &PullArgs, codecs: &Codecs) -> Result<HashSet<Digest>> {
    match &a.codecs {
        None => Ok(codecs.held()?.into_iter().collect()),
        Some(list) => list
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<Digest>() {
                Ok(d) => Ok(d),
                Err(_) => codecs.resolve(s).map(|c| c.digest()),
            })
            .collect(),
    }
}

/// The reference pulled (under `--server`'s URL when given) and whether it
/// names an update server.
fn pull_reference(a: &PullArgs) -> Result<(Reference, bool)> {
    match &a.server {
        Some(url) => {
            // A URL, or HOST:PORT as registries are named (plain HTTP on
            // loopback or with --tls-verify=false, else HTTPS).
            let url = url.trim_end_matches('/');
            anyhow::ensure!(
                !url.is_empty()
                    && !url
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .contains('/'),
                "--server takes http[s]://HOST[:PORT] or HOST[:PORT], not {url:?}"
            );
            Ok((Reference::parse(&format!("{url}/{}", a.reference))?, true))
        }
        None => Ok((Reference::parse(&a.reference)?, false)),
    }
}

/// Where a pull writes: a file, or the local store (locked while it pulls,
/// unless it only plans).
enum Destination {
    File(PathBuf),
    Store(ImageStore, Option<StoreLock>),
}

pub fn pull(a: &PullArgs) -> Result<()> {
    let codecs = a.codec_args.codecs()?;
    let (r, server) = pull_reference(a)?;
    // A registry tag may be an ordinary image, named by digest as well.
    let tag = match server {
        true => r.require_tag()?.to_string(),
        false => r.manifest_ref()?,
    };
    let into = match &a.output {
        Some(o) => Destination::File(o.clone()),
        None => {
            let store = crate::store_cmd::open()?;
            let lock = (!a.dry_run).then(|| store.lock()).transpose()?;
            Destination::Store(store, lock)
        }
    };
    // The --have files, then (into the store) every stored chain.
    let stored = match &into {
        Destination::File(_) => Vec::new(),
        Destination::Store(store, _) => store.list()?,
    };
    let mut have: Vec<Vec<PathBuf>> = a.have.iter().map(|h| vec![h.clone()]).collect();
    if let Destination::Store(store, _) = &into {
        have.extend(stored.iter().map(|i| store.paths(i)));
    }
    let reg = a.conn.connect(&r, a.limit_rate)?;
    let source = if server {
        Source::Server(&reg)
    } else {
        Source::Registry(&reg)
    };
    let opts = PullOptions {
        have,
        max_chain: match &into {
            Destination::File(_) => usize::MAX,
            Destination::Store(..) => MAX_CHAIN,
        },
        codecs: held_codecs(a, &codecs)?,
        fetch_codecs: !a.no_fetch_codecs,
        out: match &into {
            Destination::File(o) => o.clone(),
            Destination::Store(store, _) => store.blobs().scratch_path("pull"),
        },
        full: a.full,
        dry_run: a.dry_run,
        downloads: home::downloads_dir(),
        level: a.level,
        threads: a.jobs.threads,
        platform: a.platform.clone().unwrap_or_else(Platform::host),
    };
    let report = pull::pull(source, &tag, &opts, &codecs, &Bar::new())
        .with_context(|| format!("pulling {r}"))?;
    // The held image the update started from: a stored one, or a --have file.
    let start_stored = report.start_file.as_ref().and_then(|f| {
        let chains = &opts.have[a.have.len()..];
        stored
            .iter()
            .zip(chains)
            .find_map(|(i, c)| (c.last() == Some(f)).then_some(i))
    });
    let stored_as = match (&into, report.output) {
        (Destination::Store(store, Some(lock)), Some(kind)) => {
            let start = match (kind, start_stored, &report.start_file) {
                (ImageKind::Image, _, _) => Vec::new(),
                (ImageKind::Delta, Some(i), _) => i.chain.clone(),
                (ImageKind::Delta, None, Some(f)) => vec![store.blobs().import(f)?],
                (ImageKind::Delta, None, None) => anyhow::bail!("a delta from no image"),
            };
            let manifest = Reader::open(&opts.out)?
                .header()
                .origin
                .as_ref()
                .map(|o| o.manifest_digest());
            let name = r.to_string();
            Some(crate::store_cmd::store_file(
                store,
                lock,
                &name,
                start,
                &opts.out,
                (report.target, manifest),
            )?)
        }
        _ => None,
    };
    if a.json {
        let mut v = d4c_host::digest::in_oci_form(|| serde_json::to_value(&report))?;
        if let Some(s) = &stored_as {
            v["stored_as"] = s.name.clone().into();
        }
        return print_json(&v);
    }
    let start = match (start_stored, &report.start_file) {
        (Some(i), _) => Some(i.name.clone()),
        (None, f) => f.as_ref().map(|f| f.display().to_string()),
    };
    print_pull(a, &report, start, &opts, stored_as.as_ref());
    Ok(())
}

/// The human form of a pull's report.
fn print_pull(
    a: &PullArgs,
    report: &PullReport,
    start: Option<String>,
    opts: &PullOptions,
    stored: Option<&StoredImage>,
) {
    let from = match start {
        Some(s) => format!("from {s}"),
        None => "from nothing".to_string(),
    };
    let verb = if a.dry_run {
        "would download"
    } else {
        "downloaded"
    };
    println!(
        "image {} {from}: {verb} {} in {} step(s){}",
        report.target.short(),
        human_bytes(report.bytes_planned),
        report.path.len(),
        if report.merged_by_server > 1 {
            format!(" (the server merged {} deltas)", report.merged_by_server)
        } else {
            String::new()
        }
    );
    for s in &report.path {
        match &s.compact {
            Some(c) => println!(
                "  {}: {} ({} compact)",
                describe(s),
                human_bytes(s.size),
                human_bytes(c.size)
            ),
            None => println!("  {}: {}", describe(s), human_bytes(s.size)),
        }
    }
    for c in &report.codecs_fetched {
        println!(
            "  codec {} {}: {}",
            c.name,
            c.digest.short(),
            human_bytes(c.size)
        );
    }
    match (report.output, stored) {
        (Some(_), Some(s)) => println!(
            "stored {} (a full image and {} delta(s); {} received)",
            s.name,
            s.chain.len() - 1,
            human_bytes(report.bytes_transferred)
        ),
        (Some(kind), None) => {
            let what = match kind {
                ImageKind::Image => "the full image".to_string(),
                ImageKind::Delta => "a delta (mount or patch it over the --have image)".to_string(),
            };
            println!(
                "wrote {} to {} ({} received)",
                what,
                opts.out.display(),
                human_bytes(report.bytes_transferred)
            );
        }
        (None, _) => {}
    }
}
