//! The CLI behaves as Unix tools do where users expect it.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use d4c_tests::raw::Raw;

const D4C: &str = env!("CARGO_BIN_EXE_d4c");

/// `d4c … | head -1`: when the reader goes, the writer ends quietly by
/// SIGPIPE (status 141 in a shell), as `yes | head` does: no panic, no error.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("many.cdimg");
    let mut r = Raw::new();
    // Far more listing than a pipe buffers.
    let files = (0..4000)
        .map(|i| r.file(&format!("file-with-a-long-name-{i:05}"), b"x"))
        .collect();
    r.write(&image, None, vec![], files);
    let mut child = Command::new(D4C)
        .args(["inspect", "--files"])
        .arg(&image)
        .env("D4C_HOME", dir.path().join("home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    let read = child.stdout.take().unwrap().read_exact(&mut first);
    // The read end is closed here, as head closes it.
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(read.is_ok(), "no output: {err}");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
    assert!(Path::new(&image).exists());
}

/// A mistyped flag is answered in one line that names the flag meant
/// (clap's hint); status 2, as for any usage error.
#[test]
fn a_mistyped_flag_is_answered_with_the_one_meant() {
    let out = Command::new(D4C)
        .args(["convert", "some-dir", "-o", "x.cdimg", "--levle", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unexpected argument '--levle'"), "{err}");
    assert!(err.contains("similar argument exists: '--level'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Shell completions name every subcommand and their flags.
#[test]
fn completions_for_the_usual_shells() {
    for (shell, marker) in [
        ("bash", "_d4c()"),
        ("zsh", "#compdef d4c"),
        ("fish", "complete -c d4c"),
    ] {
        let out = Command::new(D4C)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        for word in ["convert", "push", "attach", "platform"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let out = Command::new(D4C)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `d4c man DIR` writes a page per command, each readable by man.
#[test]
fn man_pages_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(D4C)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (page, word) in [
        ("d4c.1", "images"),
        ("d4c-pull.1", "have"),
        ("d4c-rmi.1", "NAMES"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        assert!(text.contains(word), "{page}: no {word}");
    }
}

/// The codec flags show (and are taken) only where codecs run.
#[test]
fn codec_flags_only_where_codecs_run() {
    let help = |args: &[&str]| {
        let out = Command::new(D4C).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for cmd in [&["diff"][..], &["pull"], &["mount"], &["codec", "list"]] {
        let h = help(cmd);
        assert!(
            h.contains("--codec-memory") && h.contains("--codec-dir"),
            "{cmd:?}: {h}"
        );
    }
    // Builds with the built-in gzip only, serves with its own codec store.
    for cmd in ["convert", "serve"] {
        let h = help(&[cmd]);
        assert!(
            h.contains("--codec-memory") && !h.contains("--codec-dir"),
            "{cmd}: {h}"
        );
    }
    for cmd in ["inspect", "images", "rmi", "umount", "load", "completion"] {
        assert!(!help(&[cmd]).contains("--codec"), "{cmd}");
    }
    let out = Command::new(D4C)
        .args(["inspect", "x.cdimg", "--codec-memory", "1G"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `codec export` and `codec add` report as `codec list` does with --json.
#[test]
fn codec_export_and_add_in_json() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = d4c_tests::run_d4c(Path::new(D4C), home.path(), args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let file = home.path().join("bsdiff.wasm");
    let f = file.to_str().unwrap();
    let exported = run(&["codec", "export", "bsdiff", "-o", f, "--json"]);
    let digest = d4c_host::digest::of_file(&file).unwrap().0;
    assert_eq!(exported["sha256"], digest.oci());
    assert_eq!(exported["origin"], "builtin");
    assert_eq!(exported["output"], f);
    let added = run(&["codec", "add", f, "--json"]);
    assert_eq!(added["sha256"], digest.oci());
    assert_eq!(added["name"], "bsdiff");
}

/// `d4c serve --log-format json` writes one JSON object per event on stderr.
#[test]
fn serve_logs_json_lines() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (mut child, url) = d4c_tests::start_serve(
        Command::new(D4C)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--store",
            ])
            .arg(dir.path().join("store"))
            .env("D4C_HOME", dir.path().join("home"))
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let body = r#"{"repository":"team/app","tag":"v1","have":[],"codecs":[],"fetch_codecs":true}"#;
    let mut c = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        c,
        "POST /d4c/v1/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let pull = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("pull team/app:v1"))
        })
        .unwrap_or_else(|| panic!("no pull event in {text}"));
    assert_eq!(pull["level"], "WARN", "{pull}");
    assert!(pull["timestamp"].is_string(), "{pull}");
}
