//! Finding the old file a new file most likely evolved from, when the path alone
//! does not say: versioned directories (`numpy-1.26.0.dist-info` →
//! `numpy-1.26.1.dist-info`, `/opt/yarn-v1.22.19` → `/opt/yarn-v1.22.22`) and
//! soname bumps (`libfoo.so.3.0.20` → `libfoo.so.3.0.22`), and a path that was a
//! symlink and is now a file (glibc 2.34 made `libc.so.6`, once a link to
//! `libc-2.31.so`, the library itself).

use std::collections::HashMap;

use crate::image::entry::{Entry, Kind};

/// A path with every run of digits replaced by `#`: versions vanish, structure stays.
pub fn version_blind(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// An index of the old image's regular files by name.
pub struct Similar<'a> {
    /// Every old entry, for following symlinks.
    all: HashMap<&'a str, &'a Entry>,
    by_path: HashMap<&'a str, &'a Entry>,
    by_blind: HashMap<String, Vec<&'a Entry>>,
    by_base: HashMap<String, Vec<&'a Entry>>,
}

impl<'a> Similar<'a> {
    /// Indexes the non-empty regular files of `old`.
    pub fn new(old: &'a [Entry]) -> Similar<'a> {
        let mut s = Similar {
            all: old.iter().map(|e| (e.path.as_str(), e)).collect(),
            by_path: HashMap::new(),
            by_blind: HashMap::new(),
            by_base: HashMap::new(),
        };
        for e in old
            .iter()
            .filter(|e| e.kind == Kind::File && e.file_size() > 0)
        {
            s.by_path.insert(&e.path, e);
            s.by_blind
                .entry(version_blind(&e.path))
                .or_default()
                .push(e);
            s.by_base
                .entry(version_blind(basename(&e.path)))
                .or_default()
                .push(e);
        }
        s
    }

    /// The old file to diff `new` against: the same path, or the file an old
    /// symlink at that path led to; else the same path up to version numbers (the
    /// closest in size); else the same file name (up to versions) elsewhere with a
    /// comparable size, in the directory that shares the longest start with the
    /// new one (a renamed package's `usr/share/doc/libssl3t64/changelog.gz` takes
    /// `usr/share/doc/libssl3/`'s, not another package's of about its size).
    pub fn source(&self, new: &Entry) -> Option<&'a Entry> {
        if let Some(e) = self.by_path.get(new.path.as_str()) {
            return Some(e);
        }
        if let Some(e) = self.follow(&new.path) {
            return Some(e);
        }
        let size = new.file_size();
        let closest = |cands: &[&'a Entry]| {
            cands
                .iter()
                .copied()
                .min_by_key(|e| (e.file_size().abs_diff(size), &e.path))
        };
        if let Some(c) = self
            .by_blind
            .get(&version_blind(&new.path))
            .and_then(|c| closest(c))
        {
            return Some(c);
        }
        // Elsewhere in the tree the name alone is weak evidence; require a similar size.
        let comparable = |e: &&&'a Entry| {
            let (a, b) = (e.file_size().max(1), size.max(1));
            a.max(b) <= 2 * a.min(b)
        };
        self.by_base
            .get(&version_blind(basename(&new.path)))?
            .iter()
            .filter(comparable)
            .min_by_key(|e| {
                let shared = common_prefix(&e.path, &new.path);
                (
                    std::cmp::Reverse(shared),
                    e.file_size().abs_diff(size),
                    &e.path,
                )
            })
            .copied()
    }

    /// The non-empty regular file `path` names in the old tree, following
    /// symlinks in any component (absolute targets from the root, `..` stopping
    /// at the root) and hardlinks to their file; `None` for a dangling name or a
    /// loop.
    fn follow(&self, path: &str) -> Option<&'a Entry> {
        // Components still to walk, the next one last.
        let mut pending: Vec<&str> = path.split('/').rev().collect();
        let mut walked: Vec<&str> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c {
                "" | "." => continue,
                ".." => {
                    walked.pop();
                    continue;
                }
                _ => walked.push(c),
            }
            let Some(e) = self.all.get(walked.join("/").as_str()) else {
                continue;
            };
            if e.kind == Kind::Symlink {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                walked.pop();
                let target = e.link.as_deref()?;
                if target.starts_with('/') {
                    walked.clear();
                }
                pending.extend(target.split('/').rev());
            }
        }
        let mut e = *self.all.get(walked.join("/").as_str())?;
        if e.kind == Kind::Hardlink {
            e = self.all.get(e.link.as_deref()?)?;
        }
        (e.kind == Kind::File && e.file_size() > 0).then_some(e)
    }
}

/// Symlinks followed for one name before giving up (Linux allows 40).
const MAX_HOPS: usize = 40;

/// Bytes two paths share from the start.
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            kind: Kind::File,
            size: Some(size),
            ..Entry::dir(path)
        }
    }

    #[test]
    fn finds_renamed_versions() {
        assert_eq!(
            version_blind("opt/yarn-v1.22.19/lib/cli.js"),
            "opt/yarn-v#.#.#/lib/cli.js"
        );
        let old = vec![
            file("opt/yarn-v1.22.19/lib/cli.js", 5000),
            file("usr/lib/libfoo.so.3.0.20", 1000),
            file("usr/lib/python3/numpy-1.26.0.dist-info/RECORD", 300),
            file("etc/other/cli.js", 10),
        ];
        let s = Similar::new(&old);
        let src = |p: &str, n: u64| s.source(&file(p, n)).map(|e| e.path.clone());
        assert_eq!(
            src("opt/yarn-v1.22.22/lib/cli.js", 5100).unwrap(),
            "opt/yarn-v1.22.19/lib/cli.js"
        );
        assert_eq!(
            src("usr/lib/libfoo.so.3.0.22", 1100).unwrap(),
            "usr/lib/libfoo.so.3.0.20"
        );
        assert_eq!(
            src("usr/lib/python3/numpy-1.26.1.dist-info/RECORD", 310).unwrap(),
            "usr/lib/python3/numpy-1.26.0.dist-info/RECORD"
        );
        assert_eq!(src("srv/cli.js", 9).unwrap(), "etc/other/cli.js");
        // Among files of the same name, the one in the most similar directory.
        let old = vec![
            file("usr/share/doc/libssl3/changelog.gz", 5000),
            file("usr/share/doc/libsystemd0/changelog.gz", 6000),
            file("usr/share/doc/zlib1g/changelog.gz", 6100),
        ];
        let s = Similar::new(&old);
        let src = |p: &str, n: u64| s.source(&file(p, n)).map(|e| e.path.clone());
        assert_eq!(
            src("usr/share/doc/libssl3t64/changelog.gz", 6100).unwrap(),
            "usr/share/doc/libssl3/changelog.gz"
        );
        assert_eq!(
            src("usr/share/doc/other/changelog.gz", 6100).unwrap(),
            "usr/share/doc/zlib1g/changelog.gz"
        );
        assert_eq!(src("srv/cli.js", 5_000_000), None);
        assert_eq!(src("brand/new", 10), None);
    }

    fn link(path: &str, kind: Kind, target: &str) -> Entry {
        Entry {
            kind,
            link: Some(target.to_string()),
            ..Entry::dir(path)
        }
    }

    #[test]
    fn a_file_that_was_a_symlink_diffs_against_the_link_target() {
        let old = vec![
            Entry::dir("usr/lib"),
            link("lib", Kind::Symlink, "usr/lib"),
            file("usr/lib/libc-2.31.so", 1900),
            link("usr/lib/libc.so.6", Kind::Symlink, "libc-2.31.so"),
            link(
                "usr/lib/libm.so.6",
                Kind::Symlink,
                "/lib/./sub/../libm-2.31.so",
            ),
            link(
                "usr/lib/libm-2.31.so",
                Kind::Hardlink,
                "usr/lib/libc-2.31.so",
            ),
            link("usr/lib/up", Kind::Symlink, "../../../../usr/lib/libc.so.6"),
            link("loop/a", Kind::Symlink, "b"),
            link("loop/b", Kind::Symlink, "a"),
            link("usr/lib/gone.so", Kind::Symlink, "nowhere.so"),
            link("usr/lib/dir", Kind::Symlink, "/usr"),
        ];
        let s = Similar::new(&old);
        let src = |p: &str| s.source(&file(p, 1950)).map(|e| e.path.clone());
        assert_eq!(src("usr/lib/libc.so.6").unwrap(), "usr/lib/libc-2.31.so");
        // Through a directory symlink, an absolute target, `.`, `..` and a hardlink.
        assert_eq!(src("usr/lib/libm.so.6").unwrap(), "usr/lib/libc-2.31.so");
        assert_eq!(src("lib/libc.so.6").unwrap(), "usr/lib/libc-2.31.so");
        assert_eq!(src("usr/lib/up").unwrap(), "usr/lib/libc-2.31.so");
        assert_eq!(src("loop/a"), None);
        assert_eq!(src("usr/lib/gone.so"), None);
        assert_eq!(src("usr/lib/dir"), None);
    }
}
