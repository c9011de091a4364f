//! Hostile codec components, one per cargo feature, built by `tests/build.rs` to
//! check that the host contains them: a clean error in bounded time and memory,
//! and the next call in the same process works.

// Which code runs depends on the feature, so some is unreachable in each build.
#![allow(unreachable_code, unused_variables)]

#[cfg(not(feature = "wrong-world"))]
pub mod codec {
    use d4c_codec_guest::{Codec, Error, Result};

    /// The hostile codec; its behaviour is chosen by the enabled feature.
    pub struct Hostile;

    #[allow(unreachable_code)]
    fn misbehave(old: &[u8], other: &[u8]) -> Result<Vec<u8>> {
        let _ = (old.len(), other.len());
        #[cfg(feature = "spin")]
        {
            let mut x: u64 = old.len() as u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        #[cfg(feature = "oom")]
        {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        #[cfg(feature = "trap")]
        {
            let v: Vec<u8> = Vec::new();
            return Ok(vec![v[old.len() + other.len() + 7]]);
        }
        #[cfg(feature = "wasi-user")]
        {
            let t = std::time::SystemTime::now();
            let f = std::fs::read("/etc/passwd").map_err(|e| Error::Failed(e.to_string()))?;
            return Ok(format!("{t:?}{}", f.len()).into_bytes());
        }
        #[cfg(feature = "huge-output")]
        {
            return Ok(vec![0u8; 64 << 20]);
        }
        #[cfg(feature = "slow-drip")]
        {
            // The right bytes, each after a long pause: progress, but never done in time.
            let mut out = Vec::with_capacity(other.len());
            for &b in other {
                let mut x = b as u64;
                for _ in 0..2_000_000u32 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                out.push(b ^ (x == 0) as u8);
            }
            return Ok(out);
        }
        #[cfg(all(feature = "host-dependent", target_arch = "wasm32"))]
        {
            // Output that differs from one host to the next: right only where the
            // host allows another 512 MiB of memory.
            let roomy = core::arch::wasm32::memory_grow(0, 8192) != usize::MAX;
            let mut out = other.to_vec();
            if !roomy {
                if let Some(b) = out.first_mut() {
                    *b ^= 0xFF;
                }
            }
            return Ok(out);
        }
        let mut out = other.to_vec();
        out.extend_from_slice(&old[..old.len().min(1)]);
        Ok(out)
    }

    impl Codec for Hostile {
        const NAME: &'static str = "hostile";
        const VERSION: &'static str = "0.0.1";
        const MAX_INPUT: u64 = 1 << 30;
        const CAN_MERGE: bool = cfg!(feature = "liar");

        fn diff(old: &[u8], new: &[u8], _level: u8) -> Result<Vec<u8>> {
            #[cfg(any(
                feature = "liar",
                feature = "huge-output",
                feature = "slow-drip",
                feature = "host-dependent"
            ))]
            return Ok(new.to_vec());
            misbehave(old, new)
        }

        fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
            misbehave(old, delta)
        }

        fn merge(lower: &[u8], upper: &[u8]) -> Result<Vec<u8>> {
            if cfg!(feature = "liar") {
                return Ok(lower.to_vec());
            }
            let _ = upper;
            Err(Error::Unsupported("no merge".into()))
        }
    }

    d4c_codec_guest::export_codec!(Hostile);
}

/// A component whose world is not `d4c:codec/delta-codec`.
#[cfg(all(feature = "wrong-world", target_arch = "wasm32"))]
mod other_world {
    wit_bindgen::generate!({
        inline: "package test:other@0.1.0;
                 interface greet { hello: func(name: string) -> string; }
                 world other { export greet; }",
        world: "other",
    });

    struct Other;
    impl exports::test::other::greet::Guest for Other {
        fn hello(name: String) -> String {
            format!("hello {name}")
        }
    }
    export!(Other);
}
