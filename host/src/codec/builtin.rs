//! The codecs shipped inside d4c, compiled to components by `host/build.rs` and
//! embedded, so a user never needs the .wasm files on disk.

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtin_codecs.rs"));
}

/// A component embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinComponent {
    /// The codec's name, as its `info` reports it.
    pub name: &'static str,
    /// The component bytes.
    pub bytes: &'static [u8],
}

/// The built-in codecs, in order of preference.
pub fn builtin_components() -> &'static [BuiltinComponent] {
    const ALL: &[BuiltinComponent] = &[
        BuiltinComponent {
            name: "bsdiff",
            bytes: embedded::BSDIFF,
        },
        BuiltinComponent {
            name: "elf-refs",
            bytes: embedded::ELF_REFS,
        },
        BuiltinComponent {
            name: "zstd-dict",
            bytes: embedded::ZSTD_DICT,
        },
        BuiltinComponent {
            name: "gzip",
            bytes: embedded::GZIP,
        },
    ];
    ALL
}

/// Earlier builds of built-in codecs (codecs/retired/README.md), kept so the
/// deltas made with them still decode; never used to diff.
pub fn retired_components() -> &'static [BuiltinComponent] {
    macro_rules! retired {
        ($name:literal, $file:literal) => {
            BuiltinComponent {
                name: $name,
                bytes: include_bytes!(concat!("../../../codecs/retired/", $file)),
            }
        };
    }
    const ALL: &[BuiltinComponent] = &[
        retired!("bsdiff", "bsdiff-1.0.0-7d763bd9.wasm"),
        retired!("bsdiff", "bsdiff-1.0.1-8012fe22.wasm"),
        retired!("bsdiff", "bsdiff-1.0.1-559f159f.wasm"),
        retired!("elf-refs", "elf-refs-1.0.0-8207a495.wasm"),
        retired!("zstd-dict", "zstd-dict-1.0.0-e053f3eb.wasm"),
        retired!("gzip", "gzip-1.0.0-67a06fce.wasm"),
        retired!("gzip", "gzip-1.0.1-6ebd2378.wasm"),
    ];
    ALL
}

/// Every component d4c can decode without the store: the built-ins, then the
/// retired ones.
pub fn decodable_components() -> impl Iterator<Item = &'static BuiltinComponent> {
    builtin_components().iter().chain(retired_components())
}
