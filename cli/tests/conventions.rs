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
