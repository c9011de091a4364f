//! The local codec store and the resolver over it.
//!
//! Components are kept as `<dir>/<sha256>.wasm`, written atomically and checked
//! against their name when read. Every command on the machine (diff, patch, the
//! mount, the snapshotter) finds a codec that an image header names here or among
//! the built-ins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::builtin::{builtin_components, decodable_components};
use super::component::Codec;
use super::runtime::Runtime;
use crate::digest::Digest;
use crate::fsutil;

/// Components on disk, by sha256.
#[derive(Debug, Clone)]
pub struct CodecStore {
    dir: PathBuf,
}

impl CodecStore {
    /// The store in `dir` (created on first [`CodecStore::put`]).
    pub fn new(dir: impl Into<PathBuf>) -> CodecStore {
        CodecStore { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.wasm", digest.hex()))
    }

    /// Stores `bytes` under their sha256 (a no-op if an intact copy is there).
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if self.get(&digest).ok().flatten().is_some() {
            return Ok(digest);
        }
        fsutil::create_dir_all(&self.dir)?;
        fsutil::write_atomic(&self.path(&digest), bytes)?;
        Ok(digest)
    }

    /// The component with this digest, if stored. A file whose content does not
    /// match its name is an error, never returned.
    pub fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let got = Digest::of(&bytes);
        if got != *digest {
            bail!("{} is corrupt: its sha256 is {}", path.display(), got);
        }
        Ok(Some(bytes))
    }

    /// The digests of every stored component.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(d) = name
                .strip_suffix(".wasm")
                .and_then(|h| h.parse::<Digest>().ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Where a codec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecOrigin {
    /// Embedded in d4c.
    Builtin,
    /// The local codec store.
    Store,
    /// A file named on the command line.
    File,
}

/// Finds codecs among the built-ins and the store, loading each component once.
/// Clones share the loaded components.
#[derive(Clone)]
pub struct Codecs {
    runtime: Runtime,
    store: CodecStore,
    loaded: Arc<Mutex<HashMap<Digest, Codec>>>,
}

impl Codecs {
    /// A resolver over the built-ins and `store`, loading with `runtime`.
    pub fn new(runtime: Runtime, store: CodecStore) -> Codecs {
        Codecs {
            runtime,
            store,
            loaded: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The runtime codecs run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The local store.
    pub fn store(&self) -> &CodecStore {
        &self.store
    }

    fn load_bytes(&self, bytes: &[u8]) -> Result<Codec> {
        let digest = Digest::of(bytes);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = loaded.get(&digest) {
            return Ok(c.clone());
        }
        let codec = Codec::load(&self.runtime, bytes)?;
        loaded.insert(digest, codec.clone());
        Ok(codec)
    }

    /// The component bytes of a codec this resolver knows (built-in or stored).
    pub fn component_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        if let Some(b) = builtin_components()
            .iter()
            .find(|b| Digest::of(b.bytes) == *digest)
        {
            return Ok(b.bytes.to_vec());
        }
        self.store.get(digest)?.with_context(|| {
            format!(
                "codec sha256 {digest} is not in the store {}",
                self.store.dir().display()
            )
        })
    }

    /// Digests of every codec this machine holds: the built-ins (current and
    /// retired) and the store.
    pub fn held(&self) -> Result<Vec<Digest>> {
        let mut out: Vec<Digest> = decodable_components()
            .map(|b| Digest::of(b.bytes))
            .collect();
        out.extend(self.store.list()?);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The built-in codecs.
    pub fn builtins(&self) -> Result<Vec<Codec>> {
        builtin_components()
            .iter()
            .map(|b| self.load_bytes(b.bytes))
            .collect()
    }

    /// The built-in codec called `name`.
    pub fn builtin(&self, name: &str) -> Result<Codec> {
        match builtin_components().iter().find(|b| b.name == name) {
            Some(b) => self.load_bytes(b.bytes),
            None => {
                let names: Vec<_> = builtin_components().iter().map(|b| b.name).collect();
                bail!(
                    "no built-in codec named {name:?} (built-ins: {})",
                    names.join(", ")
                )
            }
        }
    }

    /// The codec with sha256 `digest`, from the built-ins or the store. `name` is
    /// what the caller knows it as (an image header's codec table), for the
    /// message when it is missing.
    pub fn get(&self, digest: &Digest, name: &str) -> Result<Codec> {
        if let Some(c) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(c.clone());
        }
        if let Some(b) = decodable_components().find(|b| Digest::of(b.bytes) == *digest) {
            return self.load_bytes(b.bytes);
        }
        match self.store.get(digest)? {
            Some(bytes) => self.load_bytes(&bytes),
            None => bail!(
                "codec {name} (sha256 {digest}) is not available: it is neither built in nor in the \
                 codec store {}; add its component with `d4c codec add FILE.wasm`, or pull it from \
                 the image's registry",
                self.store.dir().display()
            ),
        }
    }

    /// Loads a component file, checks it is a codec, and adds it to the store so
    /// later commands find it by digest. Returns it with whether it is a built-in.
    pub fn add_file(&self, path: &Path) -> Result<(Codec, CodecOrigin)> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let codec = self
            .load_bytes(&bytes)
            .with_context(|| format!("loading {}", path.display()))?;
        if decodable_components().any(|b| b.bytes == bytes.as_slice()) {
            return Ok((codec, CodecOrigin::Builtin));
        }
        self.store.put(&bytes)?;
        Ok((codec, CodecOrigin::Store))
    }

    /// Resolves a codec as users name it: a built-in name, a path to a .wasm file
    /// (which is added to the store), or a sha256 (full, or a unique prefix of at
    /// least 8 hex digits) of a built-in or stored component.
    pub fn resolve(&self, spec: &str) -> Result<Codec> {
        if builtin_components().iter().any(|b| b.name == spec) {
            return self.builtin(spec);
        }
        let path = Path::new(spec);
        if spec.ends_with(".wasm") || spec.contains('/') || path.is_file() {
            return Ok(self.add_file(path)?.0);
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let mut found: Vec<Digest> = builtin_components()
                .iter()
                .map(|b| Digest::of(b.bytes))
                .collect();
            found.extend(self.store.list()?);
            found.retain(|d| d.hex().starts_with(&hex));
            found.dedup();
            match found.as_slice() {
                [d] => return self.get(d, spec),
                [] => {}
                _ => bail!("codec digest prefix {spec} is ambiguous"),
            }
        }
        bail!(
            "no codec {spec:?}: not a built-in name, a .wasm file, or the sha256 of a known codec"
        )
    }

    /// Every codec: the built-ins, then each stored one (a stored file that does
    /// not load is reported as an error entry rather than hidden).
    pub fn list(&self) -> Result<Vec<(CodecOrigin, Result<Codec>)>> {
        let mut out: Vec<(CodecOrigin, Result<Codec>)> = self
            .builtins()?
            .into_iter()
            .map(|c| (CodecOrigin::Builtin, Ok(c)))
            .collect();
        for d in self.store.list()? {
            out.push((CodecOrigin::Store, self.get(&d, "stored")));
        }
        Ok(out)
    }
}
