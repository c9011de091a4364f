//! Compiles the vendored zlib (zlib/README.d4c) into the codec.

fn main() {
    let files = [
        "adler32.c",
        "crc32.c",
        "deflate.c",
        "inffast.c",
        "inflate.c",
        "inftrees.c",
        "trees.c",
        "zutil.c",
    ];
    let mut cc = cc::Build::new();
    cc.include("zlib")
        .define("Z_PREFIX", None)
        .define("Z_SOLO", None)
        .define("STDC", None)
        .warnings(false);
    for f in files {
        cc.file(format!("zlib/{f}"));
        println!("cargo:rerun-if-changed=zlib/{f}");
    }
    for h in ["deflate.h", "zconf.h", "zlib.h", "zutil.h"] {
        println!("cargo:rerun-if-changed=zlib/{h}");
    }
    cc.compile("d4czlib");
}
