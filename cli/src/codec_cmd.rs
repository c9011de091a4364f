//! `d4c codec ...`: list, inspect, add, export and test codec components.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use d4c_host::codec::{Codec, CodecInfo, CodecOrigin, Codecs};
use d4c_host::digest::Digest;
use d4c_host::fsutil;
use serde::Serialize;

use crate::output::{human_bytes, print_json};

/// `d4c codec`.
#[derive(clap::Args)]
pub struct CodecArgsCmd {
    #[command(subcommand)]
    command: CodecCommand,
    #[command(flatten)]
    codecs: crate::CodecArgs,
}

#[derive(Subcommand)]
pub enum CodecCommand {
    /// List the built-in and stored codecs.
    List {
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what a component file is, or why it is not a d4c codec.
    Inspect {
        /// A .wasm component.
        file: PathBuf,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add a component to the codec store (after checking it is a codec).
    Add {
        /// A .wasm component.
        file: PathBuf,
        /// One JSON object on stdout (as `list` shows a codec).
        #[arg(long)]
        json: bool,
    },
    /// Write a codec's component to a file.
    Export {
        /// A built-in name or a (prefix of a) sha256.
        codec: String,
        /// Where to write the .wasm file.
        #[arg(short, long)]
        output: PathBuf,
        /// One JSON object on stdout (as `list` shows a codec, and the file).
        #[arg(long)]
        json: bool,
    },
    /// Diff OLD and NEW with a codec, patch back, check the bytes, report size and time.
    Test {
        /// A built-in name, a .wasm file, or a sha256.
        codec: String,
        /// The old file.
        old: PathBuf,
        /// The new file.
        new: PathBuf,
        /// Effort, 1..22 (0: the codec's default).
        #[arg(long, default_value_t = 0)]
        level: u8,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// A codec as `list`, `inspect` and `test` show it.
#[derive(Serialize)]
struct Entry {
    name: String,
    version: String,
    sha256: Digest,
    merge: bool,
    max_input: u64,
    origin: CodecOrigin,
}

impl Entry {
    fn new(c: &Codec, origin: CodecOrigin) -> Entry {
        let CodecInfo {
            name,
            version,
            merge,
            max_input,
        } = c.info().clone();
        Entry {
            name,
            version,
            sha256: c.digest(),
            merge,
            max_input,
            origin,
        }
    }

    fn line(&self) -> String {
        format!(
            "{:<12} {:<8} {}  merge={:<5} max-input={:<11} {}",
            self.name,
            self.version,
            self.sha256,
            self.merge,
            human_bytes(self.max_input),
            serde_json::to_value(self.origin)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )
    }
}

pub fn run(a: &CodecArgsCmd) -> Result<()> {
    let codecs = a.codecs.codecs()?;
    match &a.command {
        CodecCommand::List { json } => list(&codecs, *json),
        CodecCommand::Inspect { file, json } => inspect(&codecs, file, *json),
        CodecCommand::Add { file, json } => {
            let (c, origin) = codecs.add_file(file)?;
            if *json {
                return print_json(&Entry::new(&c, origin));
            }
            match origin {
                CodecOrigin::Builtin => {
                    println!("{} {} is built in; nothing to add", c.name(), c.digest())
                }
                _ => println!(
                    "added {} {} to {}",
                    c.name(),
                    c.digest(),
                    codecs.store().dir().display()
                ),
            }
            Ok(())
        }
        CodecCommand::Export {
            codec,
            output,
            json,
        } => {
            let c = codecs.resolve(codec)?;
            let bytes = codecs.component_bytes(&c.digest())?;
            fsutil::write_atomic(output, &bytes)?;
            if *json {
                let origin = origin_of(&bytes, CodecOrigin::Store);
                let mut v =
                    d4c_host::digest::in_oci_form(|| serde_json::to_value(Entry::new(&c, origin)))?;
                v["output"] = output.display().to_string().into();
                v["size"] = bytes.len().into();
                return print_json(&v);
            }
            println!(
                "wrote {} {} ({}) to {}",
                c.name(),
                c.digest(),
                human_bytes(bytes.len() as u64),
                output.display()
            );
            Ok(())
        }
        CodecCommand::Test {
            codec,
            old,
            new,
            level,
            json,
        } => test(&codecs, codec, old, new, *level, *json),
    }
}

/// Built in if `bytes` are a built-in component, else `otherwise`.
fn origin_of(bytes: &[u8], otherwise: CodecOrigin) -> CodecOrigin {
    let builtin = d4c_host::codec::builtin_components()
        .iter()
        .any(|b| b.bytes == bytes);
    if builtin {
        CodecOrigin::Builtin
    } else {
        otherwise
    }
}

fn list(codecs: &Codecs, json: bool) -> Result<()> {
    let mut entries = Vec::new();
    for (origin, codec) in codecs.list()? {
        match codec {
            Ok(c) => entries.push(Entry::new(&c, origin)),
            // A broken file in the store is reported, not fatal for the listing.
            Err(e) => eprintln!("d4c: warning: {}", crate::output::one_line(&e)),
        }
    }
    if json {
        return print_json(&entries);
    }
    for e in &entries {
        println!("{}", e.line());
    }
    Ok(())
}

fn inspect(codecs: &Codecs, file: &PathBuf, json: bool) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let origin = origin_of(&bytes, CodecOrigin::File);
    match Codec::load(codecs.runtime(), &bytes) {
        Ok(c) => {
            let e = Entry::new(&c, origin);
            if json {
                print_json(&e)
            } else {
                println!("{}", e.line());
                Ok(())
            }
        }
        Err(err) => {
            if json {
                #[derive(Serialize)]
                struct NotCodec {
                    codec: bool,
                    sha256: Digest,
                    error: String,
                }
                print_json(&NotCodec {
                    codec: false,
                    sha256: err.digest,
                    error: err.to_string(),
                })?;
            }
            bail!("{} is not a usable d4c codec: {err}", file.display())
        }
    }
}

fn test(
    codecs: &Codecs,
    spec: &str,
    old: &PathBuf,
    new: &PathBuf,
    level: u8,
    json: bool,
) -> Result<()> {
    let codec = codecs.resolve(spec)?;
    let old_bytes = std::fs::read(old).with_context(|| format!("reading {}", old.display()))?;
    let new_bytes = std::fs::read(new).with_context(|| format!("reading {}", new.display()))?;
    let t = Instant::now();
    let delta = codec.diff(&old_bytes, &new_bytes, level)?;
    let diff_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = codec.patch_checked(&old_bytes, &delta, &Digest::of(&new_bytes))?;
    let patch_s = t.elapsed().as_secs_f64();
    debug_assert_eq!(back, new_bytes);
    let ratio = delta.len() as f64 / new_bytes.len().max(1) as f64;

    #[derive(Serialize)]
    struct Report {
        codec: Entry,
        old_bytes: usize,
        new_bytes: usize,
        delta_bytes: usize,
        ratio: f64,
        diff_seconds: f64,
        patch_seconds: f64,
        round_trip: bool,
    }
    let report = Report {
        codec: Entry::new(&codec, CodecOrigin::File),
        old_bytes: old_bytes.len(),
        new_bytes: new_bytes.len(),
        delta_bytes: delta.len(),
        ratio,
        diff_seconds: diff_s,
        patch_seconds: patch_s,
        round_trip: true,
    };
    if json {
        return print_json(&report);
    }
    println!(
        "codec       {} {} (sha256 {})",
        codec.name(),
        codec.info().version,
        codec.digest()
    );
    println!(
        "old         {} ({} bytes)",
        human_bytes(report.old_bytes as u64),
        report.old_bytes
    );
    println!(
        "new         {} ({} bytes)",
        human_bytes(report.new_bytes as u64),
        report.new_bytes
    );
    println!(
        "delta       {} ({} bytes), {:.3}% of new",
        human_bytes(delta.len() as u64),
        delta.len(),
        ratio * 100.0
    );
    println!("diff        {diff_s:.3} s");
    println!("patch       {patch_s:.3} s");
    println!("round trip  ok (sha256 of the patched bytes matches NEW)");
    Ok(())
}
