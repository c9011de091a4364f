//! `d4c codec ...` as a user runs it.

use d4c_host::digest::Digest;
use std::path::Path;

use d4c_tests::components;

fn d4c(home: &Path, args: &[&str]) -> (bool, String, String) {
    d4c_tests::run_d4c(Path::new(env!("CARGO_BIN_EXE_d4c")), home, args)
}

#[test]
fn list_json_names_the_builtins() {
    let home = tempfile::tempdir().unwrap();
    let (ok, out, err) = d4c(home.path(), &["codec", "list", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let arr = v.as_array().unwrap();
    let names: Vec<&str> = arr.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bsdiff", "elf-refs", "zstd-dict", "gzip"]);
    for c in arr {
        let sha = c["sha256"].as_str().unwrap();
        let hex = sha.strip_prefix("sha256:").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(c["merge"].is_boolean());
    }
    let merges: Vec<bool> = arr.iter().map(|c| c["merge"].as_bool().unwrap()).collect();
    assert_eq!(merges, [true, true, false, false]);
}

#[test]
fn export_inspect_add_and_test_a_third_party_codec() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let p = |n: &str| h.join(n).to_string_lossy().into_owned();

    // Export a built-in: the file's sha256 is the one listed.
    let (ok, _, err) = d4c(h, &["codec", "export", "bsdiff", "-o", &p("bsdiff.wasm")]);
    assert!(ok, "{err}");
    let (_, list, _) = d4c(h, &["codec", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let exported = Digest::of(&std::fs::read(p("bsdiff.wasm")).unwrap());
    assert_eq!(listed[0]["sha256"], exported.oci());

    // Inspect and add a third-party component; it then shows in the list.
    std::fs::write(p("template.wasm"), components::TEMPLATE).unwrap();
    let (ok, out, err) = d4c(h, &["codec", "inspect", &p("template.wasm"), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "template");
    assert_eq!(v["sha256"], Digest::of(components::TEMPLATE).oci());
    let (ok, _, err) = d4c(h, &["codec", "add", &p("template.wasm")]);
    assert!(ok, "{err}");
    let (_, list, _) = d4c(h, &["codec", "list", "--json"]);
    assert!(list.contains("\"template\""), "{list}");

    // `codec test` round-trips with a stored codec named by digest prefix.
    let old: Vec<u8> = (0..100_000u32).map(|i| (i % 200) as u8).collect();
    let mut new = old.clone();
    new[50_000] = 255;
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("new"), &new).unwrap();
    let prefix = &Digest::of(components::TEMPLATE).hex()[..12];
    for codec in [prefix, "bsdiff", "zstd-dict", &p("bsdiff.wasm")] {
        let (ok, out, err) = d4c(h, &["codec", "test", codec, &p("old"), &p("new"), "--json"]);
        assert!(ok, "{codec}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["round_trip"], true);
        assert_eq!(v["new_bytes"], new.len());
        assert!(v["delta_bytes"].as_u64().unwrap() < 2000, "{codec}: {out}");
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let bad = h.join("bad.wasm");
    std::fs::write(&bad, components::WRONG_WORLD).unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let missing = h.join("missing.wasm").to_string_lossy().into_owned();
    for args in [
        vec!["codec", "inspect", bad.as_str()],
        vec!["codec", "add", bad.as_str()],
        vec!["codec", "add", missing.as_str()],
        vec!["codec", "export", "nope", "-o", "x.wasm"],
        vec![
            "codec",
            "test",
            "bsdiff",
            missing.as_str(),
            missing.as_str(),
        ],
        vec!["codec", "list", "--codec-memory", "12Q"],
    ] {
        let (ok, out, err) = d4c(h, &args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // `inspect --json` still prints a JSON verdict for a non-codec.
    let (ok, out, _) = d4c(h, &["codec", "inspect", &bad, "--json"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["codec"], false);
    assert!(v["error"].as_str().unwrap().contains("d4c:codec"), "{out}");
}
