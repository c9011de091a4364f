//! `d4c`: container image updates by per-file delta encoding, with every codec a
//! sandboxed WebAssembly component.

mod bar;
mod codec_cmd;
mod image_cmd;
mod load_cmd;
mod mount_cmd;
mod output;
mod serve_cmd;
mod store_cmd;
mod update_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};
use d4c_host::home;

#[derive(Parser)]
#[command(
    name = "d4c",
    version,
    about = "Container image updates by delta encoding, with sandboxed wasm codecs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The caps on every codec call, for the commands that run codecs.
#[derive(Args)]
pub struct CodecLimits {
    /// Memory cap for each codec call, e.g. 512M, 3G.
    #[arg(long, global = true, value_name = "SIZE", value_parser = output::parse_size, default_value = "3G")]
    codec_memory: u64,
    /// Time cap for each codec call, in seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 600.0)]
    codec_timeout: f64,
}

/// The logs of a long-running command (`serve`).
#[derive(Args)]
pub struct LogArgs {
    /// error, warn, info, debug or trace (RUST_LOG, when set, says more
    /// precisely, libraries included).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
    /// text, or json (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: d4c_host::log::Format,
}

impl LogArgs {
    /// Starts logging as the flags say.
    pub fn init(&self) -> Result<()> {
        d4c_host::log::init(&self.log_level, self.log_format)
    }
}

/// The codec store and the caps on every codec call.
#[derive(Args)]
pub struct CodecArgs {
    /// The codec store [default: $D4C_HOME/codecs, else ~/.local/share/d4c/codecs].
    #[arg(long, global = true, env = "D4C_CODEC_DIR", value_name = "DIR")]
    codec_dir: Option<PathBuf>,
    #[command(flatten)]
    limits: CodecLimits,
}

#[derive(Subcommand)]
enum Command {
    /// Manage and try codec components.
    Codec(codec_cmd::CodecArgsCmd),
    /// Convert an OCI image (layout, docker archive or registry) into a cdimg.
    Convert(image_cmd::ConvertArgs),
    /// Encode the new image as a delta from the old one.
    Diff(image_cmd::DiffArgs),
    /// Apply deltas to a full image, giving a full image.
    Patch(image_cmd::PatchArgs),
    /// Merge consecutive deltas into one, without their base.
    Merge(image_cmd::MergeArgs),
    /// Write an image's root filesystem (from an image and deltas) to a directory.
    Extract(image_cmd::ExtractArgs),
    /// Write an image (from an image and deltas) into an OCI image layout.
    Export(image_cmd::ExportArgs),
    /// Show what a cdimg holds.
    Inspect(image_cmd::InspectArgs),
    /// Check an image (from an image and deltas) against its original: every
    /// layer's tar stream rebuilt and hashed against the config's diff_ids.
    Verify(image_cmd::VerifyArgs),
    /// Serve an image (from an image and deltas) as a read-only FUSE file system,
    /// rebuilding each file on first read.
    Mount(mount_cmd::MountArgs),
    /// Unmount a d4c mount.
    Umount(mount_cmd::UmountArgs),
    /// Register an image (from an image and deltas) with containerd, to run
    /// with the d4c snapshotter.
    Load(load_cmd::LoadArgs),
    /// Push a cdimg and the codecs it needs to a registry or update server.
    Push(update_cmd::PushArgs),
    /// Pull an image as the cheapest update from what this machine holds.
    Pull(update_cmd::PullArgs),
    /// Run the update server: takes pushes, answers pulls with one merged delta
    /// the client can decode.
    Serve(serve_cmd::ServeArgs),
    /// List the images in the local store ($D4C_HOME/images).
    Images(store_cmd::ImagesArgs),
    /// Remove images from the local store (and the files no other image uses).
    Rmi(store_cmd::RmiArgs),
    /// Print a shell completion script: `d4c completion bash > /etc/bash_completion.d/d4c`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, d4c.1 and d4c-COMMAND.1, into a directory.
    Man {
        /// The directory (created).
        dir: PathBuf,
    },
}

impl CodecLimits {
    /// The codec runtime with the caps the flags set.
    pub fn runtime(&self) -> Result<Runtime> {
        if !(self.codec_timeout.is_finite() && self.codec_timeout > 0.0) {
            anyhow::bail!("--codec-timeout must be a positive number of seconds");
        }
        let limits = Limits {
            memory: self.codec_memory,
            time: Duration::from_secs_f64(self.codec_timeout),
        };
        Runtime::new(limits, Some(home::compiled_cache_dir()))
    }
}

impl CodecLimits {
    /// The built-in codecs and the default codec store, under the flags' caps.
    pub fn codecs(&self) -> Result<Codecs> {
        Ok(Codecs::new(
            self.runtime()?,
            CodecStore::new(home::codec_dir()),
        ))
    }
}

impl CodecArgs {
    /// The built-in codecs and the codec store, under the flags' caps.
    pub fn codecs(&self) -> Result<Codecs> {
        let runtime = self.limits.runtime()?;
        let dir = self.codec_dir.clone().unwrap_or_else(home::codec_dir);
        Ok(Codecs::new(runtime, CodecStore::new(dir)))
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Codec(c) => codec_cmd::run(c),
        Command::Convert(a) => image_cmd::convert(a),
        Command::Diff(a) => image_cmd::diff(a),
        Command::Patch(a) => image_cmd::patch(a),
        Command::Merge(a) => image_cmd::merge(a),
        Command::Extract(a) => image_cmd::extract(a),
        Command::Export(a) => image_cmd::export(a),
        Command::Inspect(a) => image_cmd::inspect(a),
        Command::Verify(a) => image_cmd::verify(a),
        Command::Mount(a) => mount_cmd::run(a),
        Command::Umount(a) => mount_cmd::umount(a),
        Command::Load(a) => load_cmd::run(a),
        Command::Push(a) => update_cmd::push(a),
        Command::Pull(a) => update_cmd::pull(a),
        Command::Serve(a) => serve_cmd::run(a),
        Command::Images(a) => store_cmd::images(a),
        Command::Rmi(a) => store_cmd::rmi(a),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "d4c", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            d4c_host::fsutil::create_dir_all(dir)?;
            clap_mangen::generate_to(Cli::command(), dir)?;
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // A closed stdout (`d4c ... | head`) ends the process quietly with the
    // status shells expect, as for any Unix tool, instead of a panic in print.
    // SAFETY: restoring a signal's default action, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as for every error: what is wrong, with clap's hints
            // ("a similar argument exists: '--level'") kept.
            let text = e.render().to_string();
            let mut parts = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("error:") || l.starts_with("tip:"))
                .map(|l| l.trim_start_matches("error:").trim());
            let what = parts.next().unwrap_or("invalid arguments").to_string();
            let tips: Vec<&str> = parts.collect();
            let tips = match tips.is_empty() {
                true => String::new(),
                false => format!(" ({})", tips.join("; ")),
            };
            eprintln!("d4c: {what}{tips} (see d4c --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("d4c: error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
