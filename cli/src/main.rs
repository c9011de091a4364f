//! `d4c`: container image updates by per-file delta encoding, with every codec a
//! sandboxed WebAssembly component.

mod bar;
mod codec_cmd;
mod image_cmd;
mod load_cmd;
mod mount_cmd;
mod output;
mod serve_cmd;
mod update_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use d4c_host::codec::{CodecStore, Codecs, Limits, Runtime};
use d4c_host::home;

#[derive(Parser)]
#[command(
    name = "d4c",
    version,
    about = "Container image updates by delta encoding, with sandboxed wasm codecs"
)]
struct Cli {
    /// The codec store [default: $D4C_HOME/codecs, else ~/.local/share/d4c/codecs].
    #[arg(long, global = true, env = "D4C_CODEC_DIR", value_name = "DIR")]
    codec_dir: Option<PathBuf>,
    /// Memory cap for each codec call, e.g. 512M, 3G.
    #[arg(long, global = true, value_name = "SIZE", value_parser = output::parse_size, default_value = "3G")]
    codec_memory: u64,
    /// Time cap for each codec call, in seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 600.0)]
    codec_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage and try codec components.
    #[command(subcommand)]
    Codec(codec_cmd::CodecCommand),
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
    /// Print a shell completion script: `d4c completion bash > /etc/bash_completion.d/d4c`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// The codec runtime with the caps the flags set.
    fn runtime(&self) -> Result<Runtime> {
        if !(self.codec_timeout.is_finite() && self.codec_timeout > 0.0) {
            anyhow::bail!("--codec-timeout must be a positive number of seconds");
        }
        let limits = Limits {
            memory: self.codec_memory,
            time: Duration::from_secs_f64(self.codec_timeout),
        };
        Runtime::new(limits, Some(home::compiled_cache_dir()))
    }

    fn codecs(&self) -> Result<Codecs> {
        let runtime = self.runtime()?;
        let dir = self.codec_dir.clone().unwrap_or_else(home::codec_dir);
        Ok(Codecs::new(runtime, CodecStore::new(dir)))
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Codec(c) => codec_cmd::run(&cli, c),
        Command::Convert(a) => image_cmd::convert(&cli, a),
        Command::Diff(a) => image_cmd::diff(&cli, a),
        Command::Patch(a) => image_cmd::patch(&cli, a),
        Command::Merge(a) => image_cmd::merge(&cli, a),
        Command::Extract(a) => image_cmd::extract(&cli, a),
        Command::Export(a) => image_cmd::export(&cli, a),
        Command::Inspect(a) => image_cmd::inspect(a),
        Command::Verify(a) => image_cmd::verify(&cli, a),
        Command::Mount(a) => mount_cmd::run(&cli, a),
        Command::Umount(a) => mount_cmd::umount(a),
        Command::Load(a) => load_cmd::run(a),
        Command::Push(a) => update_cmd::push(&cli, a),
        Command::Pull(a) => update_cmd::pull(&cli, a),
        Command::Serve(a) => serve_cmd::run(&cli, a),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "d4c", &mut std::io::stdout());
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
