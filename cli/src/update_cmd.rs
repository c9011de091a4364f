//! `d4c push` and `d4c pull`: registries and the update server.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use d4c_host::digest::Digest;
use d4c_host::home;
use d4c_host::image::builder::Platform;
use d4c_host::image::format::ImageKind;
use d4c_host::registry::artifact::Item;
use d4c_host::registry::auth::Credentials;
use d4c_host::registry::{ConnectOptions, Reference, Registry};
use d4c_host::update::pull::{self, PullOptions, Source};
use d4c_host::update::push::SentCodec;
use d4c_host::update::{attach, push};

use crate::bar::Bar;
use crate::output::{human_bytes, parse_size, print_json};
use crate::Cli;

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
    /// Verify the registry's TLS certificate [default: true]; false accepts
    /// any (a test registry's self-signed one).
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
    /// The cdimg to push (a full image or a delta).
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
}

/// `d4c pull`.
#[derive(Args)]
pub struct PullArgs {
    /// `HOST[:PORT]/REPO:TAG`, or `REPO:TAG` with --server.
    reference: String,
    /// Ask this d4c update server (e.g. http://host:7000) to choose and merge the update.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A full image this machine holds (repeatable): updates may start from it.
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
    /// The cdimg to write: the image, or a delta from the --have image it starts from.
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

pub fn push(cli: &Cli, a: &PushArgs) -> Result<()> {
    let r = Reference::parse(&a.reference)?;
    if a.attach {
        return attach(cli, a, &r);
    }
    let tag = match r.tag {
        Some(_) => Some(r.require_tag()?),
        None if r.digest.is_some() => anyhow::bail!("{r}: push names a tag, not a digest"),
        None => None,
    };
    let reg = a.conn.connect(&r, None)?;
    let codecs = cli.codecs()?;
    let report = push::push(&reg, &a.file, tag, &codecs, &Bar::new())?;
    if a.json {
        return print_json(&report);
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
fn attach(cli: &Cli, a: &PushArgs, r: &Reference) -> Result<()> {
    let tag = r.require_tag()?;
    let reg = a.conn.connect(r, None)?;
    let codecs = cli.codecs()?;
    let report = attach::attach(&reg, &a.file, tag, &codecs, &Bar::new())?;
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

pub fn pull(cli: &Cli, a: &PullArgs) -> Result<()> {
    let codecs = cli.codecs()?;
    let held: HashSet<Digest> = match &a.codecs {
        None => codecs.held()?.into_iter().collect(),
        Some(list) => list
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<Digest>() {
                Ok(d) => Ok(d),
                Err(_) => codecs.resolve(s).map(|c| c.digest()),
            })
            .collect::<Result<_>>()?,
    };
    let out = match (&a.output, a.dry_run) {
        (Some(o), _) => o.clone(),
        (None, true) => PathBuf::from("unused.cdimg"),
        (None, false) => anyhow::bail!("name the cdimg to write with -o (or plan with --dry-run)"),
    };
    let (r, server) = match &a.server {
        Some(url) => {
            let url = url.trim_end_matches('/');
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--server takes a URL (http://HOST:PORT), not {url:?}"
            );
            (Reference::parse(&format!("{url}/{}", a.reference))?, true)
        }
        None => (Reference::parse(&a.reference)?, false),
    };
    // A registry tag may be an ordinary image, named by digest as well.
    let tag = match server {
        true => r.require_tag()?.to_string(),
        false => r.manifest_ref()?,
    };
    let reg = a.conn.connect(&r, a.limit_rate)?;
    let source = if server {
        Source::Server(&reg)
    } else {
        Source::Registry(&reg)
    };
    let opts = PullOptions {
        have: a.have.clone(),
        codecs: held,
        fetch_codecs: !a.no_fetch_codecs,
        out,
        full: a.full,
        dry_run: a.dry_run,
        downloads: home::downloads_dir(),
        level: a.level,
        threads: a.jobs.threads,
        platform: a.platform.clone().unwrap_or_else(Platform::host),
    };
    let report = pull::pull(source, &tag, &opts, &codecs, &Bar::new())
        .with_context(|| format!("pulling {r}"))?;
    if a.json {
        return print_json(&report);
    }
    let from = match (&report.start, &report.start_file) {
        (Some(_), Some(f)) => format!("from {}", f.display()),
        _ => "from nothing".to_string(),
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
    if let Some(kind) = report.output {
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
    Ok(())
}
