//! bsdiff's base-free merge on hostile deltas: where both decode and merge, the
//! merged delta must patch any base exactly as the two in order do.
#![no_main]

use d4c_codec_bsdiff::delta::Delta;
use d4c_codec_bsdiff::merge::merge;
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cut = u16::from_le_bytes([data[0], data[1]]) as usize % (data.len() - 2);
    let base_len = data[2] as usize;
    let rest = &data[3..];
    let cut = cut.min(rest.len());
    let (a, b) = rest.split_at(cut);
    let (Ok(lower), Ok(upper)) = (Delta::decode(a, LIMIT), Delta::decode(b, LIMIT)) else {
        return;
    };
    let base: Vec<u8> = (0..base_len).map(|i| i as u8).collect();
    let Ok(merged) = merge(&lower, &upper) else {
        return;
    };
    let stepwise = lower.apply(&base).and_then(|mid| upper.apply(&mid));
    if let Ok(want) = stepwise {
        assert_eq!(merged.apply(&base).ok(), Some(want));
    }
});
