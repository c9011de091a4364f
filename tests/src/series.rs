//! The small real series most end-to-end tests share: busybox and three libssl3
//! releases from Debian layered by umoci ([`crate::ssl_series`]), converted to
//! v1..v3 cdimgs with the deltas d12 and d23, in a directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sh;

/// A converted series and the d4c binary that runs commands on it.
pub struct Series {
    /// Where everything lives.
    pub dir: PathBuf,
    /// `D4C_HOME` of the commands.
    pub home: PathBuf,
    /// The d4c binary.
    pub bin: PathBuf,
}

impl Series {
    /// Builds the series afresh in `data_dir()/name` (the Debian downloads are
    /// cached beside it); level 3 keeps it quick.
    pub fn build(bin: &Path, name: &str) -> Series {
        Self::build_with(bin, name, &[])
    }

    /// Like [`Series::build`], with more arguments to every `convert`.
    pub fn build_with(bin: &Path, name: &str, convert_args: &[&str]) -> Series {
        let dir = crate::data_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = crate::ssl_series(&dir);
        let home = dir.join("home");
        let s = Series {
            dir,
            home,
            bin: bin.to_path_buf(),
        };
        for v in ["v1", "v2", "v3"] {
            let source = format!("{}:{v}", layout.display());
            let out = s.p(&format!("{v}.cdimg"));
            let mut args = vec!["convert", &source, "-o", &out, "--level", "3"];
            args.extend(convert_args);
            s.ok(&args);
        }
        for (old, new, out) in [("v1", "v2", "d12"), ("v2", "v3", "d23")] {
            s.ok(&[
                "diff",
                "--old",
                &s.p(&format!("{old}.cdimg")),
                "--new",
                &s.p(&format!("{new}.cdimg")),
                "-o",
                &s.p(&format!("{out}.cdimg")),
            ]);
        }
        s
    }

    /// The same helpers over `dir` with no images yet, for a test that makes its own.
    pub fn empty(bin: &Path, dir: &Path) -> Series {
        Series {
            dir: dir.to_path_buf(),
            home: dir.join("home"),
            bin: bin.to_path_buf(),
        }
    }

    /// `d4c convert LAYOUT:TAG -o TAG.cdimg` for a layout in the series directory.
    pub fn convert(&self, layout: &str, tag: &str) {
        self.ok(&[
            "convert",
            &format!("{}:{tag}", self.p(layout)),
            "-o",
            &self.p(&format!("{tag}.cdimg")),
        ]);
    }

    /// A path in the series directory, as a string for arguments.
    pub fn p(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Runs d4c; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        crate::run_d4c(&self.bin, &self.home, args)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "d4c {args:?} failed: {err}");
        out
    }

    /// Runs a failing command; returns its one-line error.
    pub fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "d4c {args:?} should fail: {out}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "d4c {args:?}: not one line: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    /// `d4c diff --old OLD --new NEW -o OUT` and `extra` arguments, names in the
    /// series directory except those in `extra`; returns (success, stdout, stderr).
    pub fn diff(&self, old: &str, new: &str, out: &str, extra: &[&str]) -> (bool, String, String) {
        let (old, new, out) = (self.p(old), self.p(new), self.p(out));
        let mut args = vec!["diff", "--old", &old, "--new", &new, "-o", &out];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `d4c patch --base BASE --delta DELTA... -o OUT`, names in the series
    /// directory, which must succeed.
    pub fn patch(&self, base: &str, deltas: &[&str], out: &str) {
        let (base, out) = (self.p(base), self.p(out));
        let deltas: Vec<String> = deltas.iter().map(|d| self.p(d)).collect();
        let mut args = vec!["patch", "--base", &base, "--delta"];
        args.extend(deltas.iter().map(String::as_str));
        args.extend(["-o", &out]);
        self.ok(&args);
    }

    /// `d4c merge --lower LOWER --upper UPPER -o OUT`, names in the series
    /// directory, which must succeed.
    pub fn merge(&self, lower: &str, upper: &str, out: &str) {
        let (lower, upper, out) = (self.p(lower), self.p(upper), self.p(out));
        self.ok(&["merge", "--lower", &lower, "--upper", &upper, "-o", &out]);
    }

    /// `d4c inspect --json` of a file in the series directory.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", &self.p(name), "--json"])).unwrap()
    }

    /// Asserts that two cdimgs of the series hold the same tree, whatever
    /// original image each keeps (a squashed export converted back keeps
    /// the export's).
    pub fn same_tree(&self, a: &str, b: &str) {
        let tree = |n: &str| {
            let r = d4c_host::image::format::Reader::open(&self.dir.join(n)).unwrap();
            d4c_host::image::entry::image_id(&r.header().entries, None)
        };
        assert_eq!(tree(a), tree(b), "{a} vs {b}");
    }

    /// Asserts two cdimgs yield the same image.
    pub fn same_image(&self, a: &str, b: &str) {
        assert_eq!(
            self.inspect(a)["image_id"],
            self.inspect(b)["image_id"],
            "{a} vs {b}"
        );
    }

    /// umoci's own unpack of a tag, the reference for extract.
    pub fn umoci_rootfs(&self, tag: &str) -> PathBuf {
        let b = self.dir.join(format!("umoci-{tag}"));
        if !b.exists() {
            sh(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{tag}", self.p("oci")))
                .arg(&b))
            .unwrap();
        }
        b.join("rootfs")
    }
}

/// A byte in the middle of the first codec delta of the cdimg at `path`, and the
/// path of the file that delta rebuilds: where to flip a bit to corrupt one file.
pub fn first_delta_byte(path: &Path) -> (u64, String) {
    use d4c_host::image::entry::Data;
    let r = d4c_host::image::format::Reader::open(path).unwrap();
    r.header()
        .entries
        .iter()
        .find_map(|e| match &e.data {
            Some(Data::Delta { steps, .. }) => {
                Some((steps[0].offset + steps[0].length / 2, e.path.clone()))
            }
            _ => None,
        })
        .expect("the cdimg has a codec delta")
}
