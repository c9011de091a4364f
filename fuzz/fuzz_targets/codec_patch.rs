//! The built-in codecs' patch (bsdiff, elf-refs, zstd-dict, gzip) on hostile deltas: an error or some
//! output, never a panic, and never more output than the codec's input limit. elf-refs's merge too
//! (the delta merged with itself), since its layouts and map come from the delta.
#![no_main]

use d4c_codec_bsdiff::Bsdiff;
use d4c_codec_elf_refs::ElfRefs;
use d4c_codec_guest::Codec;
use d4c_codec_gzip::Gzip;
use d4c_codec_zstd_dict::ZstdDict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into an old file and a delta.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (old, delta) = rest.split_at(cut);
    if let Ok(out) = Bsdiff::patch(old, delta) {
        assert!(out.len() as u64 <= Bsdiff::MAX_INPUT);
    }
    if let Ok(out) = ElfRefs::patch(old, delta) {
        assert!(out.len() as u64 <= ElfRefs::MAX_INPUT);
    }
    let _ = ElfRefs::merge(delta, delta);
    if let Ok(out) = ZstdDict::patch(old, delta) {
        assert!(out.len() as u64 <= ZstdDict::MAX_INPUT);
    }
    // gzip's output is its content deflated again: bounded by the content cap
    // plus deflate's worst-case growth and the header.
    if let Ok(out) = Gzip::patch(old, delta) {
        assert!(out.len() as u64 <= (512 << 20) + (512 << 20) / 1000 + (1 << 21));
    }
});
