//! The sandbox: hostile components built by tests/build.rs each give a clean error
//! naming the codec and operation, within the caps, and the process goes on
//! working. Also the compile cache, the codec store and concurrent calls.

use std::time::Duration;

use d4c_host::codec::{Codec, CodecStore, Codecs, ErrorKind, Op, Runtime};
use d4c_host::digest::Digest;
use d4c_tests::components;

const OLD: &[u8] = b"the old bytes of some file";
const NEW: &[u8] = b"the new bytes of some file, longer";

/// A runtime with small caps so hostile codecs are stopped quickly.
fn tight() -> Runtime {
    d4c_tests::runtime(256 << 20, Duration::from_secs(2))
}

/// After a hostile call, the same runtime still runs a good codec correctly.
fn still_works(rt: &Runtime) {
    let good = Codec::load(rt, components::TEMPLATE).expect("template codec loads");
    let d = good.diff(OLD, NEW, 0).unwrap();
    assert_eq!(good.patch_checked(OLD, &d, &Digest::of(NEW)).unwrap(), NEW);
}

fn load(rt: &Runtime, bytes: &[u8]) -> Codec {
    Codec::load(rt, bytes).unwrap_or_else(|e| panic!("hostile component should load: {e}"))
}

#[test]
fn endless_loop_hits_the_time_cap() {
    let rt = tight();
    let c = load(&rt, components::SPIN);
    for e in [
        c.diff(OLD, NEW, 0).unwrap_err(),
        c.patch(OLD, NEW).unwrap_err(),
    ] {
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert_eq!(e.codec, "hostile");
        assert!(e.to_string().contains("codec hostile"), "{e}");
    }
    still_works(&rt);
}

#[test]
fn endless_allocation_hits_the_memory_cap() {
    let rt = tight();
    let c = load(&rt, components::OOM);
    let e = c.diff(OLD, NEW, 0).unwrap_err();
    assert_eq!((e.kind, e.op), (ErrorKind::OutOfMemory, Op::Diff), "{e}");
    still_works(&rt);
}

#[test]
fn huge_output_hits_the_memory_cap() {
    let rt = d4c_tests::runtime(32 << 20, Duration::from_secs(10));
    let c = load(&rt, components::HUGE_OUTPUT);
    let e = c.patch(OLD, NEW).unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
    still_works(&rt);
}

#[test]
fn slow_drip_hits_the_time_cap() {
    // Right bytes, slowly: progress is no excuse past the cap.
    let rt = tight();
    let c = load(&rt, components::SLOW_DRIP);
    let big = vec![7u8; 64 << 10];
    let e = c.patch(OLD, &big).unwrap_err();
    assert_eq!((e.kind, e.op), (ErrorKind::Timeout, Op::Patch), "{e}");
    still_works(&rt);
}

#[test]
fn output_that_differs_by_host_is_caught_by_the_digest() {
    // The codec is right where memory is plentiful (as when the delta was made
    // and checked) and wrong under a tighter cap: the digest catches it there.
    let roomy = d4c_tests::runtime(3 << 30, Duration::from_secs(10));
    let c = load(&roomy, components::HOST_DEPENDENT);
    let d = c.diff(OLD, NEW, 0).unwrap();
    assert_eq!(c.patch_checked(OLD, &d, &Digest::of(NEW)).unwrap(), NEW);
    let tight = tight();
    let c = load(&tight, components::HOST_DEPENDENT);
    let e = c.patch_checked(OLD, &d, &Digest::of(NEW)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::WrongOutput, "{e}");
    still_works(&tight);
}

#[test]
fn trap_is_an_error() {
    let rt = tight();
    let c = load(&rt, components::TRAP);
    let e = c.patch(OLD, NEW).unwrap_err();
    assert_eq!((e.kind, e.op), (ErrorKind::Trap, Op::Patch), "{e}");
    still_works(&rt);
}

#[test]
fn wrong_bytes_are_caught_by_the_digest() {
    let rt = tight();
    let c = load(&rt, components::LIAR);
    let d = c.diff(OLD, NEW, 0).unwrap();
    let e = c.patch_checked(OLD, &d, &Digest::of(NEW)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::WrongOutput, "{e}");
    still_works(&rt);
}

#[test]
fn no_files_clock_or_environment() {
    let rt = tight();
    let c = load(&rt, components::WASI_USER);
    let e = c.diff(OLD, NEW, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Trap, "{e}");
    still_works(&rt);
}

#[test]
fn components_that_are_not_codecs_are_refused_at_load() {
    let rt = tight();
    let wat_module = b"\0asm\x01\0\0\0";
    for (what, bytes) in [
        ("wrong world", components::WRONG_WORLD),
        ("core module", &wat_module[..]),
        ("garbage", b"definitely not wasm"),
        (
            "truncated",
            &components::TEMPLATE[..components::TEMPLATE.len() / 2],
        ),
    ] {
        let e = Codec::load(&rt, bytes).unwrap_err();
        assert_eq!(
            (e.kind, e.op),
            (ErrorKind::NotACodec, Op::Load),
            "{what}: {e}"
        );
        assert_eq!(e.digest, Digest::of(bytes));
        assert!(
            !e.to_string().contains('\n'),
            "{what}: multi-line error {e}"
        );
    }
    still_works(&rt);
}

#[test]
fn many_threads_call_one_codec_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let codecs = d4c_tests::codecs_in(dir.path());
    let bsdiff = codecs.builtin("bsdiff").unwrap();
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let c = bsdiff.clone();
            s.spawn(move || {
                let old: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8 ^ t).collect();
                let mut new = old.clone();
                new[1000 + t as usize] = t;
                new.extend_from_slice(&[t; 100]);
                let d = c.diff(&old, &new, 3).unwrap();
                assert_eq!(c.patch_checked(&old, &d, &Digest::of(&new)).unwrap(), new);
            });
        }
    });
}

/// Compiled code runs natively: a cache file is loaded only for the component
/// it was made from, and only if no other user could have written it.
#[test]
fn a_compiled_file_under_another_name_or_writable_by_others_is_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let rt = || Runtime::new(Default::default(), Some(cache.path().to_path_buf())).unwrap();
    let template = Codec::load(&rt(), components::TEMPLATE).unwrap();
    let hostile = Codec::load(&rt(), components::SPIN).unwrap();
    let file_of = |c: &Codec| {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&c.digest().hex())
            })
            .unwrap()
    };
    // The template's compiled code, copied under the hostile codec's name.
    std::fs::copy(file_of(&template), file_of(&hostile)).unwrap();
    let again = Codec::load(&rt(), components::SPIN).unwrap();
    assert_eq!(
        again.name(),
        "hostile",
        "the copied code was run as this codec"
    );
    // A cache file anyone may write is compiled afresh and rewritten.
    let f = file_of(&template);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    let again = Codec::load(&rt(), components::TEMPLATE).unwrap();
    assert_eq!(again.name(), "template");
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o644,
        "the world-writable file was loaded, not replaced"
    );
}

#[test]
fn compiled_components_are_cached_and_a_corrupt_cache_is_ignored() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Default::default(), Some(cache.path().to_path_buf())).unwrap();
    let a = Codec::load(&rt, components::TEMPLATE).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one compiled artifact");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&a.digest().hex()));
    // Loaded from the cache by a new runtime: same codec.
    let rt2 = Runtime::new(Default::default(), Some(cache.path().to_path_buf())).unwrap();
    let b = Codec::load(&rt2, components::TEMPLATE).unwrap();
    assert_eq!(a.info(), b.info());
    // A corrupted cache file is detected and replaced by a fresh compile.
    let mut data = std::fs::read(&files[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&files[0], &data).unwrap();
    let rt3 = Runtime::new(Default::default(), Some(cache.path().to_path_buf())).unwrap();
    let c = Codec::load(&rt3, components::TEMPLATE).unwrap();
    let d = c.diff(OLD, NEW, 0).unwrap();
    assert_eq!(c.patch(OLD, &d).unwrap(), NEW);
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        data,
        "the corrupt artifact was rewritten"
    );
}

#[test]
fn codec_store_adds_finds_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let codecs = d4c_tests::codecs_in(dir.path());
    let file = dir.path().join("template.wasm");
    std::fs::write(&file, components::TEMPLATE).unwrap();
    let digest = Digest::of(components::TEMPLATE);

    let missing = codecs.get(&digest, "template").unwrap_err().to_string();
    assert!(
        missing.contains("template") && missing.contains(&digest.hex()),
        "{missing}"
    );

    let (c, _) = codecs.add_file(&file).unwrap();
    assert_eq!(c.digest(), digest);
    // A fresh resolver over the same store finds it by digest and by prefix.
    let again = Codecs::new(
        d4c_tests::runtime(1 << 30, Duration::from_secs(60)),
        CodecStore::new(dir.path().join("codecs")),
    );
    assert_eq!(again.get(&digest, "template").unwrap().name(), "template");
    assert_eq!(again.resolve(&digest.hex()[..10]).unwrap().digest(), digest);
    assert!(again.resolve("no-such-codec").is_err());

    // Something not a codec is not stored.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, components::WRONG_WORLD).unwrap();
    assert!(again.add_file(&bad).is_err());
    assert_eq!(again.store().list().unwrap(), vec![digest]);

    // A stored file whose bytes no longer match its name is refused.
    let stored = dir
        .path()
        .join("codecs")
        .join(format!("{}.wasm", digest.hex()));
    std::fs::write(&stored, components::SPIN).unwrap();
    let fresh = Codecs::new(
        d4c_tests::runtime(1 << 30, Duration::from_secs(60)),
        CodecStore::new(dir.path().join("codecs")),
    );
    let e = fresh.get(&digest, "template").unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
}
