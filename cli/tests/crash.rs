//! Crash safety: `kill -9` of convert, diff, patch and merge at seeded points
//! while they run. Afterwards the output path holds either nothing, or what it
//! held before (a valid cdimg written earlier), never a partial file; and a rerun
//! succeeds with the right image id.
//!
//! The kill points are drawn from a fixed seed (override with D4C_KILL_SEED to
//! explore others); each is a fraction of the command's own uninterrupted run
//! time, measured first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use d4c_host::image::format::Reader;
use d4c_tests::series::Series;

fn series() -> &'static Series {
    static S: OnceLock<Series> = OnceLock::new();
    S.get_or_init(|| Series::build(Path::new(env!("CARGO_BIN_EXE_d4c")), "crash-tests"))
}

/// xorshift64*: a small deterministic generator, enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn image_id(path: &str) -> Option<String> {
    Reader::open(Path::new(path))
        .ok()
        .map(|r| r.header().image_id.hex())
}

/// Runs `args`, killing the process with SIGKILL after `after` (if it is still
/// running). Returns whether it finished on its own.
fn run_and_kill(s: &Series, args: &[String], after: Duration) -> bool {
    let mut child = Command::new(&s.bin)
        .env("D4C_HOME", &s.home)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if t.elapsed() >= after {
            child.kill().unwrap();
            child.wait().unwrap();
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_never_leaves_a_partial_file_and_a_rerun_succeeds() {
    let s = series();
    let seed = std::env::var("D4C_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_d4c0_u64);
    eprintln!("kill points from seed {seed:#x} (D4C_KILL_SEED)");
    let mut rng = Rng(seed | 1);
    let layout = s.p("oci");
    let commands: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "convert",
            vec![
                "convert".into(),
                format!("{layout}:v3"),
                "--level".into(),
                "3".into(),
                "-o".into(),
            ],
            "v3.cdimg",
        ),
        (
            "diff",
            vec![
                "diff".into(),
                "--old".into(),
                s.p("v1.cdimg"),
                "--new".into(),
                s.p("v3.cdimg"),
                "-o".into(),
            ],
            "v3.cdimg",
        ),
        (
            "patch",
            vec![
                "patch".into(),
                "--base".into(),
                s.p("v1.cdimg"),
                "--delta".into(),
                s.p("d12.cdimg"),
                s.p("d23.cdimg"),
                "--level".into(),
                "3".into(),
                "-o".into(),
            ],
            "v3.cdimg",
        ),
        (
            "merge",
            vec![
                "merge".into(),
                "--lower".into(),
                s.p("d12.cdimg"),
                "--upper".into(),
                s.p("d23.cdimg"),
                "-o".into(),
            ],
            "v3.cdimg",
        ),
    ];
    let want = image_id(&s.p("v3.cdimg")).unwrap();
    // What an earlier run stored at the output path, which a crash must not lose.
    let earlier = std::fs::read(s.p("v1.cdimg")).unwrap();
    let earlier_id = image_id(&s.p("v1.cdimg")).unwrap();
    for (name, args, _) in &commands {
        let out = s.p(&format!("crash-{name}.cdimg"));
        let mut full = args.clone();
        full.push(out.clone());
        // One uninterrupted run gives the time scale (and checks the command).
        let t = Instant::now();
        assert!(
            run_and_kill(s, &full, Duration::from_secs(600)),
            "{name} failed"
        );
        let total = t.elapsed();
        assert_eq!(image_id(&out).as_deref(), Some(want.as_str()), "{name}");
        for point in 0..3 {
            std::fs::write(&out, &earlier).unwrap();
            let after = total.mul_f64(0.05 + 0.9 * rng.fraction());
            let finished = run_and_kill(s, &full, after);
            let id = image_id(&out);
            if finished {
                assert_eq!(id.as_deref(), Some(want.as_str()), "{name} at {after:?}");
            } else {
                // Killed: the earlier file, whole, or (if the rename happened just
                // before the kill) the new one, whole; nothing in between.
                assert!(
                    id.as_deref() == Some(earlier_id.as_str())
                        || id.as_deref() == Some(want.as_str()),
                    "{name} killed after {after:?} (point {point}): output is {id:?}"
                );
            }
            // A rerun succeeds.
            assert!(
                run_and_kill(s, &full, Duration::from_secs(600)),
                "{name} rerun"
            );
            assert_eq!(
                image_id(&out).as_deref(),
                Some(want.as_str()),
                "{name} rerun"
            );
        }
    }
}
