//! The bsdiff 4 encoder: for each stretch of the new file, find the old position
//! with the longest exact match through a suffix array, then extend the match
//! forwards and backwards while at least half the bytes agree, so that the diff
//! stream is mostly zeros and compresses well even across small edits (changed
//! addresses in machine code, version strings).
//!
//! This follows bsdiff 4.3's `bsdiff.c` step by step; only the suffix sort
//! (divsufsort instead of qsufsort), the stream coding and the search's order
//! of a suffix that is a prefix of the new file ([`less`]; since 1.1.0) differ.

use crate::delta::{Control, Delta};

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
fn matchlen(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap())
            ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Whether the suffix `a` sorts before `b`, eight bytes at a time (in wasm32
/// the slice comparison is a byte-wise `memcmp` loop). A suffix that is a
/// proper prefix of `b` sorts before it, as in the suffix array: bsdiff 4.3
/// took it for equal and sent the search the other way, so where the old file
/// ends in a run (zeros, say) and the new file holds a longer one, every
/// position of that run found only a one-byte match, after binary-search
/// steps that each compared the whole run: node's 98 MB binary, 20.11.1 ->
/// 20.12.0, compared 3.9e12 bytes, now 3.8e9.
fn less(a: &[u8], b: &[u8]) -> bool {
    let n = matchlen(a, b);
    if n < a.len().min(b.len()) {
        a[n] < b[n]
    } else {
        a.len() < b.len()
    }
}

/// The old position whose suffix shares the longest prefix with `new`, and that
/// length. `sa` is the (non-empty) suffix array of `old`.
fn search(sa: &[i32], old: &[u8], new: &[u8]) -> (usize, usize) {
    let (mut st, mut en) = (0usize, sa.len() - 1);
    while en - st >= 2 {
        let x = st + (en - st) / 2;
        let p = sa[x] as usize;
        if less(&old[p..], new) {
            st = x;
        } else {
            en = x;
        }
    }
    let (a, b) = (sa[st] as usize, sa[en] as usize);
    let (la, lb) = (matchlen(&old[a..], new), matchlen(&old[b..], new));
    if la > lb {
        (a, la)
    } else {
        (b, lb)
    }
}

/// Computes the bsdiff delta turning `old` into `new`.
pub fn diff(old: &[u8], new: &[u8]) -> Delta {
    let mut delta = Delta {
        old_len: old.len() as u64,
        new_len: new.len() as u64,
        ..Delta::default()
    };
    if new.is_empty() {
        return delta;
    }
    if old.is_empty() {
        delta.ctrl.push(Control {
            add: 0,
            copy: new.len() as u64,
            seek: 0,
        });
        delta.extra.extend_from_slice(new);
        return delta;
    }
    let mut sa = vec![0i32; old.len()];
    divsufsort::sort_in_place(old, &mut sa);

    let (oldsize, newsize) = (old.len(), new.len());
    let at_old = |i: i64, b: u8| i >= 0 && (i as usize) < oldsize && old[i as usize] == b;
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0usize, 0usize, 0i64);

    while scan < newsize {
        let mut oldscore = 0i64;
        scan += len;
        let mut scsc = scan;
        while scan < newsize {
            (pos, len) = search(&sa, old, &new[scan..]);
            while scsc < scan + len {
                if at_old(scsc as i64 + lastoffset, new[scsc]) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len as i64 == oldscore && len != 0) || len as i64 > oldscore + 8 {
                break;
            }
            if at_old(scan as i64 + lastoffset, new[scan]) {
                oldscore -= 1;
            }
            scan += 1;
        }

        if len as i64 != oldscore || scan == newsize {
            // Extend the previous match forwards while at least half the bytes agree.
            let (mut s, mut sf, mut lenf) = (0i64, 0i64, 0usize);
            let mut i = 0;
            while lastscan + i < scan && lastpos + i < oldsize {
                if old[lastpos + i] == new[lastscan + i] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as i64 > sf * 2 - lenf as i64 {
                    sf = s;
                    lenf = i;
                }
            }
            // Extend the new match backwards the same way.
            let mut lenb = 0usize;
            if scan < newsize {
                let (mut s, mut sb) = (0i64, 0i64);
                let mut i = 1;
                while scan >= lastscan + i && pos >= i {
                    if old[pos - i] == new[scan - i] {
                        s += 1;
                    }
                    if s * 2 - i as i64 > sb * 2 - lenb as i64 {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Where the two extensions overlap, split at the best point.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0i64, 0i64, 0usize);
                for i in 0..overlap {
                    if new[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i] {
                        s += 1;
                    }
                    if new[scan - lenb + i] == old[pos - lenb + i] {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf = lenf + lens - overlap;
                lenb -= lens;
            }

            delta.diff.extend(
                new[lastscan..lastscan + lenf]
                    .iter()
                    .zip(&old[lastpos..lastpos + lenf])
                    .map(|(n, o)| n.wrapping_sub(*o)),
            );
            let copy = &new[lastscan + lenf..scan - lenb];
            delta.extra.extend_from_slice(copy);
            delta.ctrl.push(Control {
                add: lenf as u64,
                copy: copy.len() as u64,
                seek: (pos - lenb) as i64 - (lastpos + lenf) as i64,
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos as i64 - scan as i64;
        }
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_that_is_a_prefix_of_new_sorts_before_it() {
        // The old file ends in a run the new file holds longer: the search
        // must reach the run, not the file's last bytes.
        let mut old = b"xyz".repeat(100);
        old.extend([0u8; 40]);
        old.extend(b"abc");
        old.extend([0u8; 8]);
        let mut sa = vec![0i32; old.len()];
        divsufsort::sort_in_place(&old, &mut sa);
        let new = [0u8; 64];
        let (pos, len) = search(&sa, &old, &new);
        assert_eq!(len, 40, "found a {len}-byte match at {pos}");
    }

    #[test]
    fn less_orders_like_slices() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b""),
            (b"abcdefghij", b"abcdefghij"),
            (b"abcdefghia", b"abcdefghib"),
            (b"abcdefghib", b"abcdefghia"),
            (b"b", b"a"),
            (b"0123456789abcdeX", b"0123456789abcdeY"),
        ];
        for (a, b) in cases {
            assert_eq!(less(a, b), a < b, "{a:?} {b:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn less_agrees_with_slice_order(
            a in proptest::collection::vec(0u8..3, 0..40),
            b in proptest::collection::vec(0u8..3, 0..40),
        ) {
            proptest::prop_assert_eq!(less(&a, &b), a < b);
        }
    }

    #[test]
    fn matchlen_counts_common_prefix() {
        assert_eq!(matchlen(b"abcdefghijk", b"abcdefghijX"), 10);
        assert_eq!(matchlen(b"abc", b"abcdef"), 3);
        assert_eq!(matchlen(b"", b"a"), 0);
    }

    #[test]
    fn small_edit_gives_small_delta() {
        let old: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[1234] ^= 0xff;
        new.splice(40_000..40_000, b"inserted".iter().copied());
        new.drain(100_000..100_100);
        let d = diff(&old, &new);
        assert_eq!(d.apply(&old).unwrap(), new);
        assert!(d.extra.len() < 64, "extra {} bytes", d.extra.len());
    }
}
