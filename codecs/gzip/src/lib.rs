//! `gzip`: a gzip file as a delta of its *uncompressed* content. Deflate hides
//! every small change behind a new bit stream from the first changed byte on, so
//! byte-level codecs see two unrelated random strings where a man page or a
//! changelog gained one paragraph. This codec inflates both sides, encodes the
//! new text against the old one with zstd (the old text as reference prefix, as
//! zstd-dict does), and records how to deflate the result again bit for bit: the
//! gzip header verbatim and the setting that reproduces the new deflate stream.
//!
//! A setting is a zlib level and memLevel; or GNU gzip's way: zlib's parse (the
//! same symbol for symbol at memLevel 8) with 32K-symbol blocks ended where the
//! stream ends them, recorded in the delta and forced in the vendored zlib
//! (`zlib/README.d4c`); or a level of Go's `compress/flate` (what docker,
//! buildkit and containerd write), or klauspost/pgzip's block size (umoci,
//! skopeo), both ported in `src/goflate/`. A stream no setting reproduces
//! answers `unsupported` and the host uses another codec. docs/CODECS.md has
//! the measurements.
//!
//! Delta layout: `"D4CGZIP1"`, flags (1: the old file was inflated and its
//! content is the base; 2: block ends follow; 4: a Go writer), the level, zlib's
//! memLevel (for Go: 0 compress/flate, 1 pgzip), [varint count and varint
//! steps of the block ends | pgzip's varint block size], varint length and
//! bytes of the new gzip header, varint length of the new content, then the
//! zstd frame. The trailer (CRC-32, length) is recomputed.

mod goflate;

use d4c_codec_guest::{varint, Codec, Error, Result};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

/// The vendored zlib (zlib/README.d4c), symbols prefixed `z_`.
#[allow(non_camel_case_types, missing_docs)]
mod z {
    use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_void};

    pub type voidpf = *mut c_void;
    pub type uInt = c_uint;

    #[repr(C)]
    pub struct z_stream {
        pub next_in: *mut u8,
        pub avail_in: c_uint,
        pub total_in: c_ulong,
        pub next_out: *mut u8,
        pub avail_out: c_uint,
        pub total_out: c_ulong,
        pub msg: *mut c_char,
        pub state: *mut c_void,
        pub zalloc: extern "C" fn(voidpf, uInt, uInt) -> voidpf,
        pub zfree: extern "C" fn(voidpf, voidpf),
        pub opaque: voidpf,
        pub data_type: c_int,
        pub adler: c_ulong,
        pub reserved: c_ulong,
    }

    extern "C" {
        pub fn z_zlibVersion() -> *const c_char;
        pub fn z_deflateInit2_(
            strm: *mut z_stream,
            level: c_int,
            method: c_int,
            window_bits: c_int,
            mem_level: c_int,
            strategy: c_int,
            version: *const c_char,
            stream_size: c_int,
        ) -> c_int;
        pub fn z_deflate(strm: *mut z_stream, flush: c_int) -> c_int;
        pub fn z_deflateEnd(strm: *mut z_stream) -> c_int;
        pub fn z_inflateInit2_(
            strm: *mut z_stream,
            window_bits: c_int,
            version: *const c_char,
            stream_size: c_int,
        ) -> c_int;
        pub fn z_inflate(strm: *mut z_stream, flush: c_int) -> c_int;
        pub fn z_inflateEnd(strm: *mut z_stream) -> c_int;
        pub fn z_crc32(crc: c_ulong, buf: *const u8, len: c_uint) -> c_ulong;
        pub fn d4c_deflateBlockEnds(strm: *mut z_stream, ends: *const c_ulong, n: c_uint) -> c_int;
    }

    pub const Z_OK: c_int = 0;
    pub const Z_STREAM_END: c_int = 1;
    pub const Z_BUF_ERROR: c_int = -5;
    pub const Z_NO_FLUSH: c_int = 0;
    pub const Z_FINISH: c_int = 4;
    pub const Z_BLOCK: c_int = 5;
    pub const Z_DEFLATED: c_int = 8;
    pub const Z_DEFAULT_STRATEGY: c_int = 0;
}

const MAGIC: &[u8; 8] = b"D4CGZIP1";
/// Flag: the base of the inner delta is the old file inflated.
const OLD_INFLATED: u8 = 1;
/// Flag: the stream is GNU gzip's: zlib's parse with 32K-symbol blocks ended
/// where the delta records (gzip ends blocks by a rule of its own).
const BLOCK_ENDS: u8 = 2;
/// Flag: the stream is a Go program's: `compress/flate` at the recorded
/// level (memLevel byte [`GO_STDLIB`]) or klauspost/pgzip (memLevel byte
/// [`GO_PGZIP`], level 5, then a varint block size).
const GO: u8 = 4;
const GO_STDLIB: u8 = 0;
const GO_PGZIP: u8 = 1;
/// pgzip's block sizes tried after the one the stream shows: its default,
/// then umoci's.
const PGZIP_BLOCK_SIZES: &[usize] = &[1 << 20, 256 << 10];
/// Go levels tried, most common first: the default (6), `BestSpeed` (1, what
/// go-containerregistry writes), `BestCompression` (9), then the others.
const GO_LEVELS: &[u8] = &[6, 1, 9, 2, 3, 4, 5, 7, 8, 0];
/// log2 of GNU gzip's symbols per block.
const GNU_LIT_LOG: u8 = 15;
/// Levels tried for GNU gzip streams: `gzip -9` (Debian's), then gzip's default.
const GNU_LEVELS: &[u8] = &[9, 6];
/// Largest uncompressed content handled. Larger content (a gzip bomb, or just a
/// big archive) counts as not inflatable: the codec does not apply to such a
/// new file, and such an old file is the base as it is.
const MAX_RAW: usize = 512 << 20;
/// zlib settings tried to reproduce a stream, most common first: `gzip -9`,
/// zlib's default (6), then the other levels; memLevel 8 is zlib's default.
const SETTINGS: &[(u8, u8)] = &[
    (9, 8),
    (6, 8),
    (9, 9),
    (6, 9),
    (1, 8),
    (2, 8),
    (3, 8),
    (4, 8),
    (5, 8),
    (7, 8),
    (8, 8),
];
/// zstd level when the host asks for the default.
const DEFAULT_LEVEL: u8 = 19;
/// zstd's largest window in a 32-bit address space.
const MAX_WINDOW_LOG: u32 = 30;
/// Input fed to zlib per call when deflating: small enough that a setting
/// that does not reproduce the stream is found out early.
const CHUNK: usize = 64 << 10;

/// The gzip codec.
pub struct Gzip;

/// Length of the gzip member header at the start of `b` (RFC 1952), if `b` is a
/// deflate-compressed gzip file long enough to hold the 8-byte trailer too.
pub fn header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 || b[3] & 0xe0 != 0 {
        return None;
    }
    let flags = b[3];
    let mut pos = 10usize;
    if flags & 4 != 0 {
        let xlen = u16::from_le_bytes([*b.get(pos)?, *b.get(pos + 1)?]) as usize;
        pos += 2 + xlen;
    }
    for bit in [8, 16] {
        if flags & bit != 0 {
            pos += b.get(pos..)?.iter().position(|&c| c == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        pos += 2;
    }
    (pos + 8 <= b.len()).then_some(pos)
}

/// Whether `h` is exactly one gzip member header.
fn is_header(h: &[u8]) -> bool {
    let mut padded = h.to_vec();
    padded.extend_from_slice(&[0; 8]);
    header_len(&padded) == Some(h.len())
}

fn zerr(what: &str, code: i32) -> Error {
    Error::Failed(format!("zlib {what}: error {code}"))
}

/// Room in front of each zlib allocation for its size, kept aligned for any type.
const ALLOC_HEADER: usize = 16;

/// zlib's allocator, on Rust's (the Rust bindings give zlib no default).
extern "C" fn zalloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    let Some(n) = (items as usize)
        .checked_mul(size as usize)
        .and_then(|n| n.checked_add(ALLOC_HEADER))
    else {
        return std::ptr::null_mut();
    };
    let Ok(layout) = std::alloc::Layout::from_size_align(n, ALLOC_HEADER) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout is non-zero in size; the size is stored in the header
    // so `zfree` can rebuild the layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return std::ptr::null_mut();
        }
        (p as *mut usize).write(n);
        p.add(ALLOC_HEADER) as z::voidpf
    }
}

extern "C" fn zfree(_: z::voidpf, p: z::voidpf) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` came from `zalloc`, which put the allocation's size in front.
    unsafe {
        let base = (p as *mut u8).sub(ALLOC_HEADER);
        let n = (base as *const usize).read();
        std::alloc::dealloc(
            base,
            std::alloc::Layout::from_size_align_unchecked(n, ALLOC_HEADER),
        );
    }
}

/// A zlib stream, ended on drop.
struct Stream {
    s: Box<z::z_stream>,
    deflate: bool,
    /// Block ends the deflate stream points to (must live as long as it).
    _ends: Vec<std::os::raw::c_ulong>,
}

impl Stream {
    fn blank() -> Box<z::z_stream> {
        Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        })
    }

    fn inflate() -> Result<Stream> {
        let mut s = Self::blank();
        // SAFETY: `s` is a fresh z_stream; -15 selects a raw deflate stream.
        let rc = unsafe {
            z::z_inflateInit2_(
                &mut *s,
                -15,
                z::z_zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(zerr("inflateInit2", rc));
        }
        Ok(Stream {
            s,
            deflate: false,
            _ends: Vec::new(),
        })
    }

    fn deflate(setting: &Setting) -> Result<Stream> {
        let mut s = Self::blank();
        let ends: Vec<std::os::raw::c_ulong> = setting
            .ends
            .iter()
            .map(|&e| e as std::os::raw::c_ulong)
            .collect();
        if !ends.is_empty() {
            s.reserved = GNU_LIT_LOG.into();
        }
        // SAFETY: as above; the settings are within zlib's documented ranges,
        // and `ends` is kept in the Stream, which outlives every deflate call.
        unsafe {
            let rc = z::z_deflateInit2_(
                &mut *s,
                setting.level.into(),
                z::Z_DEFLATED,
                -15,
                setting.mem_level.into(),
                z::Z_DEFAULT_STRATEGY,
                z::z_zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            );
            if rc != z::Z_OK {
                return Err(zerr("deflateInit2", rc));
            }
            if !ends.is_empty() {
                let rc = z::d4c_deflateBlockEnds(&mut *s, ends.as_ptr(), ends.len() as u32);
                if rc != z::Z_OK {
                    z::z_deflateEnd(&mut *s);
                    return Err(zerr("block ends", rc));
                }
            }
        }
        Ok(Stream {
            s,
            deflate: true,
            _ends: ends,
        })
    }

    /// One zlib call from `input` into `out`; returns (return code, bytes read,
    /// bytes written).
    fn step(&mut self, input: &[u8], out: &mut [u8], flush: i32) -> (i32, usize, usize) {
        let s = &mut *self.s;
        s.next_in = input.as_ptr() as *mut u8;
        s.avail_in = input.len() as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        // SAFETY: the pointers and lengths describe live buffers for the call;
        // zlib only reads `input` and writes within `out`.
        let rc = unsafe {
            if self.deflate {
                z::z_deflate(s, flush)
            } else {
                z::z_inflate(s, flush)
            }
        };
        let read = input.len() - s.avail_in as usize;
        let written = out.len() - s.avail_out as usize;
        (rc, read, written)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by the matching *Init2_ call.
        unsafe {
            if self.deflate {
                z::z_deflateEnd(&mut *self.s);
            } else {
                z::z_inflateEnd(&mut *self.s);
            }
        }
    }
}

/// A deflate stream inflated: the content, how many bytes of input the stream
/// took, and where its blocks ended (bytes of content before each later block).
struct Inflated {
    raw: Vec<u8>,
    used: usize,
    ends: Vec<u64>,
}

/// Inflates the raw deflate stream at the start of `body`, or `None` if `body`
/// does not start with a complete, valid stream of at most [`MAX_RAW`] bytes.
fn inflate(body: &[u8]) -> Result<Option<Inflated>> {
    let mut s = Stream::inflate()?;
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    loop {
        // zlib counts in u32; feed at most 1 GiB at a time. Z_BLOCK returns at
        // every block boundary, which is where the block ends are read.
        let end = body.len().min(pos + (1 << 30));
        let (rc, read, written) = s.step(&body[pos..end], &mut buf, z::Z_BLOCK);
        pos += read;
        if out.len() + written > MAX_RAW {
            return Ok(None);
        }
        out.extend_from_slice(&buf[..written]);
        // Bit 7 of data_type: stopped at the start of a block.
        if s.s.data_type & 128 != 0 {
            let at = out.len() as u64;
            if at > 0 && ends.last() != Some(&at) {
                ends.push(at);
            }
        }
        match rc {
            z::Z_STREAM_END => {
                // The last block ends with the stream; only earlier ends count.
                if ends.last() == Some(&(out.len() as u64)) {
                    ends.pop();
                }
                return Ok(Some(Inflated {
                    raw: out,
                    used: pos,
                    ends,
                }));
            }
            z::Z_OK => {}
            // No progress possible: the stream is cut short.
            z::Z_BUF_ERROR if read == 0 && written == 0 => return Ok(None),
            z::Z_BUF_ERROR => {}
            _ => return Ok(None),
        }
    }
}

/// How to deflate content so that it comes out as the original stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    level: u8,
    mem_level: u8,
    /// Empty for plain zlib; else GNU gzip's block ends (see [`BLOCK_ENDS`]).
    ends: Vec<u64>,
}

/// The compressor and setting that reproduce a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Deflater {
    Zlib(Setting),
    /// Go's `compress/flate` at this level (0-9).
    Go(u8),
    /// klauspost/pgzip at its default level with blocks of this size.
    Pgzip(usize),
}

/// Deflates `raw` as `deflater` does, handing each piece of output to `sink`;
/// stops early (returning false) when `sink` does.
fn deflate(raw: &[u8], deflater: &Deflater, sink: impl FnMut(&[u8]) -> bool) -> Result<bool> {
    match deflater {
        Deflater::Zlib(setting) => zlib_deflate(raw, setting, sink),
        Deflater::Go(level) => Ok(goflate::deflate(*level, raw, sink)),
        Deflater::Pgzip(block_size) => Ok(goflate::pgzip(*block_size, raw, sink)),
    }
}

/// Deflates `raw` with zlib at `setting`, handing each piece of output to
/// `sink`; stops early (returning false) when `sink` does.
fn zlib_deflate(
    raw: &[u8],
    setting: &Setting,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<bool> {
    let mut s = Stream::deflate(setting)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    loop {
        let end = raw.len().min(pos + CHUNK);
        let flush = if end == raw.len() {
            z::Z_FINISH
        } else {
            z::Z_NO_FLUSH
        };
        let (rc, read, written) = s.step(&raw[pos..end], &mut buf, flush);
        pos += read;
        if !sink(&buf[..written]) {
            return Ok(false);
        }
        match rc {
            z::Z_STREAM_END => return Ok(true),
            z::Z_OK | z::Z_BUF_ERROR => {}
            _ => return Err(zerr("deflate", rc)),
        }
    }
}

/// Whether `deflater` gives exactly `expected` for `raw`.
fn reproduces(raw: &[u8], deflater: &Deflater, expected: &[u8]) -> Result<bool> {
    let mut at = 0;
    let whole = deflate(raw, deflater, |piece| {
        let same = expected.get(at..at + piece.len()) == Some(piece);
        at += piece.len();
        same
    })?;
    Ok(whole && at == expected.len())
}

/// The setting that reproduces `stream` (whose inflated form is `new`), if any.
/// A stream of several blocks tries GNU gzip's way first (zlib's parse, blocks
/// ended where the stream ends them), which also covers zlib's own streams of
/// several blocks: a setting that fails is only found out when its first block
/// comes out, some 100 KB of input later, so trying the plain settings first
/// cost ~50 ms per large file. Single-block streams try the plain settings.
/// A stream that ends with an empty final stored block (the four bytes `00 00
/// ff ff`), as Go's `Close` ends every stream and zlib never does, tries
/// Go's levels first; one that ends with a sync flush and an empty fixed
/// block (`00 00 ff ff 03 00`), as pgzip's does, tries pgzip first.
fn find_setting(new: &Inflated, stream: &[u8]) -> Result<Option<Deflater>> {
    let gnu = GNU_LEVELS.iter().map(|&level| Setting {
        level,
        mem_level: 8,
        ends: new.ends.clone(),
    });
    let plain = SETTINGS.iter().map(|&(level, mem_level)| Setting {
        level,
        mem_level,
        ends: Vec::new(),
    });
    let zlib: Vec<Deflater> = if new.ends.is_empty() {
        plain.map(Deflater::Zlib).collect()
    } else {
        gnu.chain(plain).map(Deflater::Zlib).collect()
    };
    let go = GO_LEVELS.iter().map(|&level| Deflater::Go(level));
    let order: Vec<Deflater> = if stream.ends_with(&[0, 0, 0xff, 0xff, 3, 0]) {
        let pgzip = pgzip_block_sizes(new).into_iter().map(Deflater::Pgzip);
        pgzip.chain(go).chain(zlib).collect()
    } else if stream.ends_with(&[0, 0, 0xff, 0xff]) {
        go.chain(zlib).collect()
    } else {
        zlib
    };
    for d in order {
        if reproduces(&new.raw, &d, stream)? {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// The block sizes to try for a pgzip stream: first the one its blocks show
/// (pgzip's blocks end only every 65535 bytes of input, where a window of
/// klauspost's compressor ends, and where pgzip's own block does), then the
/// usual ones.
fn pgzip_block_sizes(new: &Inflated) -> Vec<usize> {
    let window = goflate::PGZIP_WINDOW as u64;
    let shown = new
        .ends
        .iter()
        .find(|&&e| e % window != 0)
        .map(|&e| e as usize);
    let sizes = shown.into_iter().chain(PGZIP_BLOCK_SIZES.iter().copied());
    let mut unique = Vec::new();
    for s in sizes {
        if s > goflate::PGZIP_TAIL && !unique.contains(&s) {
            unique.push(s);
        }
    }
    unique
}

/// Writes the flags (`old_flag` and the deflater's), the level, memLevel and
/// the block ends.
fn put_deflater(out: &mut Vec<u8>, old_flag: u8, deflater: &Deflater) {
    match deflater {
        Deflater::Go(level) => out.extend_from_slice(&[old_flag | GO, *level, GO_STDLIB]),
        Deflater::Pgzip(block_size) => {
            out.extend_from_slice(&[old_flag | GO, 5, GO_PGZIP]);
            varint::put(out, *block_size as u64);
        }
        Deflater::Zlib(s) if s.ends.is_empty() => {
            out.extend_from_slice(&[old_flag, s.level, s.mem_level]);
        }
        Deflater::Zlib(s) => {
            out.extend_from_slice(&[old_flag | BLOCK_ENDS, s.level, s.mem_level]);
            varint::put(out, s.ends.len() as u64);
            let mut prev = 0;
            for &e in &s.ends {
                varint::put(out, e - prev);
                prev = e;
            }
        }
    }
}

/// Reads what [`put_deflater`] wrote: the flags, the deflater, and the rest.
fn read_deflater(b: &[u8]) -> Result<(u8, Deflater, &[u8])> {
    let [flags, level, mem_level, ..] = *b else {
        return Err(Error::InvalidInput("gzip delta: truncated settings".into()));
    };
    let go = flags & GO != 0;
    let valid = flags & !(OLD_INFLATED | BLOCK_ENDS | GO) == 0
        && if go {
            flags & BLOCK_ENDS == 0
                && (mem_level == GO_STDLIB && level <= 9 || mem_level == GO_PGZIP && level == 5)
        } else {
            (1..=9).contains(&level) && (1..=9).contains(&mem_level)
        };
    if !valid {
        return Err(Error::InvalidInput(format!(
            "gzip delta: bad settings (flags {flags}, level {level}, memLevel {mem_level})"
        )));
    }
    if go && mem_level == GO_PGZIP {
        let mut r = varint::Reader::new(&b[3..]);
        let size = r.get_len("pgzip block size", MAX_RAW as u64)?;
        if size <= goflate::PGZIP_TAIL {
            return Err(Error::InvalidInput(format!(
                "gzip delta: pgzip block size {size} is not above {}",
                goflate::PGZIP_TAIL
            )));
        }
        return Ok((flags, Deflater::Pgzip(size), r.rest()));
    }
    if go {
        return Ok((flags, Deflater::Go(level), &b[3..]));
    }
    let mut r = varint::Reader::new(&b[3..]);
    let mut ends = Vec::new();
    if flags & BLOCK_ENDS != 0 {
        // Each end takes at least one byte of the delta: that bounds the count.
        let n = r.get_len("block count", b.len() as u64)?;
        let mut at = 0u64;
        for _ in 0..n {
            let step = r.get()?;
            at = match at.checked_add(step) {
                Some(a) if step > 0 && a < MAX_RAW as u64 => a,
                _ => return Err(Error::InvalidInput("gzip delta: bad block ends".into())),
            };
            ends.push(at);
        }
    }
    let setting = Setting {
        level,
        mem_level,
        ends,
    };
    Ok((flags, Deflater::Zlib(setting), r.rest()))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0;
    for piece in data.chunks(1 << 30) {
        // SAFETY: a live slice of at most 1 GiB, so its length fits zlib's uInt.
        crc = unsafe { z::z_crc32(crc, piece.as_ptr(), piece.len() as u32) };
    }
    crc as u32
}

/// The 8-byte gzip trailer for `raw`: CRC-32 and length mod 2^32, little-endian.
fn trailer(raw: &[u8]) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&crc32(raw).to_le_bytes());
    t[4..].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    t
}

/// The content of a gzip file that is exactly one member with a valid trailer,
/// with the length of its header; `None` for anything else.
fn gunzip_exact(file: &[u8]) -> Result<Option<(usize, Inflated)>> {
    let Some(hl) = header_len(file) else {
        return Ok(None);
    };
    let body = &file[hl..file.len() - 8];
    Ok(match inflate(body)? {
        Some(i) if i.used == body.len() && trailer(&i.raw) == file[file.len() - 8..] => {
            Some((hl, i))
        }
        _ => None,
    })
}

/// The base the inner delta uses: the old file inflated if it is a gzip file
/// whose first stream inflates completely, else the old bytes as they are. The
/// rule depends on `old` alone, and the flag records the outcome.
fn old_base(old: &[u8]) -> Result<(u8, std::borrow::Cow<'_, [u8]>)> {
    if let Some(hl) = header_len(old) {
        if let Some(i) = inflate(&old[hl..])? {
            return Ok((OLD_INFLATED, i.raw.into()));
        }
    }
    Ok((0, old.into()))
}

fn zstd_err(what: &str, code: usize) -> Error {
    Error::Failed(format!("zstd {what}: {}", zstd_safe::get_error_name(code)))
}

/// `new` as one zstd frame with `base` as reference prefix, the window covering both.
fn zstd_encode(base: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>> {
    let level = if level == 0 {
        DEFAULT_LEVEL
    } else {
        level.min(22)
    };
    let total = (base.len() + new.len()).max(2);
    let window = (usize::BITS - (total - 1).leading_zeros()).clamp(10, MAX_WINDOW_LOG);
    let mut cctx = CCtx::try_create().ok_or_else(|| Error::Failed("zstd: no context".into()))?;
    for p in [
        CParameter::CompressionLevel(level.into()),
        CParameter::WindowLog(window),
        CParameter::EnableLongDistanceMatching(true),
    ] {
        cctx.set_parameter(p)
            .map_err(|c| zstd_err("parameter", c))?;
    }
    cctx.ref_prefix(base).map_err(|c| zstd_err("prefix", c))?;
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut frame, new)
        .map_err(|c| zstd_err("compress", c))?;
    Ok(frame)
}

/// The `len` bytes a frame from [`zstd_encode`] holds, given the same `base`.
fn zstd_decode(base: &[u8], frame: &[u8], len: usize) -> Result<Vec<u8>> {
    let mut dctx = DCtx::try_create().ok_or_else(|| Error::Failed("zstd: no context".into()))?;
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(|c| zstd_err("parameter", c))?;
    dctx.ref_prefix(base).map_err(|c| zstd_err("prefix", c))?;
    let mut out = Vec::with_capacity(len);
    dctx.decompress(&mut out, frame).map_err(|c| {
        Error::InvalidInput(format!(
            "gzip delta: corrupt zstd frame: {}",
            zstd_safe::get_error_name(c)
        ))
    })?;
    if out.len() != len {
        return Err(Error::InvalidInput(format!(
            "gzip delta: content of {} bytes, header says {len}",
            out.len()
        )));
    }
    Ok(out)
}

impl Codec for Gzip {
    const NAME: &'static str = "gzip";
    const VERSION: &'static str = "1.1.0";
    const MAX_INPUT: u64 = 512 << 20;

    fn diff(old: &[u8], new: &[u8], level: u8) -> Result<Vec<u8>> {
        Self::check_size("old", old.len())?;
        Self::check_size("new", new.len())?;
        let Some((hl, inflated)) = gunzip_exact(new)? else {
            return Err(Error::Unsupported(format!(
                "new is not a single-member gzip file with a valid trailer and at most {MAX_RAW} bytes of content"
            )));
        };
        let stream = &new[hl..new.len() - 8];
        let Some(deflater) = find_setting(&inflated, stream)? else {
            return Err(Error::Unsupported(
                "no zlib or Go setting reproduces the new deflate stream".into(),
            ));
        };
        let raw = &inflated.raw;
        let (old_flag, base) = old_base(old)?;
        let frame = zstd_encode(&base, raw, level)?;
        let mut out = Vec::with_capacity(64 + hl + frame.len());
        out.extend_from_slice(MAGIC);
        put_deflater(&mut out, old_flag, &deflater);
        varint::put(&mut out, hl as u64);
        out.extend_from_slice(&new[..hl]);
        varint::put(&mut out, raw.len() as u64);
        out.extend_from_slice(&frame);
        Ok(out)
    }

    fn patch(old: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        let mut r = varint::Reader::new(delta);
        r.expect(MAGIC, "gzip")?;
        let (flags, deflater, rest) = read_deflater(r.rest())?;
        let mut r = varint::Reader::new(rest);
        let hl = r.get_len("gzip header length", 1 << 20)?;
        let rest = r.rest();
        if rest.len() < hl || !is_header(&rest[..hl]) {
            return Err(Error::InvalidInput("gzip delta: bad gzip header".into()));
        }
        let (header, rest) = rest.split_at(hl);
        let mut r = varint::Reader::new(rest);
        let len = r.get_len("content length", MAX_RAW as u64)?;
        let (got, base) = old_base(old)?;
        if got != flags & OLD_INFLATED {
            return Err(Error::InvalidInput(
                "gzip delta: made for a base of another kind (gzip or not)".into(),
            ));
        }
        let raw = zstd_decode(&base, r.rest(), len)?;
        let mut out = Vec::with_capacity(hl + raw.len() / 3 + 64);
        out.extend_from_slice(header);
        deflate(&raw, &deflater, |piece| {
            out.extend_from_slice(piece);
            true
        })?;
        out.extend_from_slice(&trailer(&raw));
        Ok(out)
    }
}

d4c_codec_guest::export_codec!(Gzip);

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip file as zlib writes it at `level`, with a file name in the header.
    fn gzip(raw: &[u8], level: u8) -> Vec<u8> {
        let mut header = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 2, 3];
        header.extend_from_slice(b"name.txt\0");
        let setting = Setting {
            level,
            mem_level: 8,
            ends: Vec::new(),
        };
        member(header, raw, &setting)
    }

    /// A gzip member: `header`, `raw` deflated with `setting`, the trailer.
    fn member(mut out: Vec<u8>, raw: &[u8], setting: &Setting) -> Vec<u8> {
        deflate(raw, &Deflater::Zlib(setting.clone()), |p| {
            out.extend_from_slice(p);
            true
        })
        .unwrap();
        out.extend_from_slice(&trailer(raw));
        out
    }

    fn text(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"abcdefgh ijklmnop\n"[(x >> 16) as usize % 18]
            })
            .collect()
    }

    #[test]
    fn round_trip_is_small_for_a_small_change() {
        let old_raw = text(1, 200_000);
        let mut new_raw = b"a new paragraph at the top\n".to_vec();
        new_raw.extend_from_slice(&old_raw);
        for level in [9, 6, 1] {
            let (old, new) = (gzip(&old_raw, level), gzip(&new_raw, level));
            let d = Gzip::diff(&old, &new, 0).unwrap();
            assert!(d.len() < 200, "level {level}: delta {} bytes", d.len());
            assert_eq!(Gzip::patch(&old, &d).unwrap(), new);
            // The wrong base is refused, not turned into other bytes.
            assert!(Gzip::patch(&gzip(&text(2, 1000), 9), &d).is_err());
            assert!(Gzip::patch(&old_raw, &d).is_err());
        }
    }

    #[test]
    fn a_plain_old_file_is_the_base_as_it_is() {
        let raw = text(3, 50_000);
        let new = gzip(&raw, 9);
        let d = Gzip::diff(&raw, &new, 0).unwrap();
        assert!(d.len() < 200, "delta {} bytes", d.len());
        assert_eq!(Gzip::patch(&raw, &d).unwrap(), new);
        let d = Gzip::diff(b"", &new, 0).unwrap();
        assert_eq!(Gzip::patch(b"", &d).unwrap(), new);
    }

    #[test]
    fn files_zlib_cannot_reproduce_are_unsupported() {
        let raw = text(4, 10_000);
        let good = gzip(&raw, 9);
        // Not gzip at all, a stored-then-edited stream, trailing bytes, a bad CRC.
        let mut trailing = good.clone();
        trailing.push(0);
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 5] ^= 1;
        let mut foreign = good[..19].to_vec(); // header incl. name
        foreign.extend_from_slice(&[1, 3, 0, 0xfc, 0xff, b'a', b'b', b'c']); // stored block
        foreign.extend_from_slice(&trailer(b"abc"));
        for new in [&raw, &trailing, &bad_crc, &foreign] {
            assert!(
                matches!(Gzip::diff(&good, new, 0), Err(Error::Unsupported(_))),
                "{} bytes accepted",
                new.len()
            );
        }
    }

    #[test]
    fn content_over_the_cap_is_not_inflated() {
        // Zeros past the cap deflate to about a thousandth: a new file like
        // that is refused, an old one is used as it is, on both sides alike.
        let bomb = gzip(&vec![0u8; MAX_RAW + (44 << 20)], 9);
        assert!(bomb.len() < 4 << 20, "{}", bomb.len());
        assert!(matches!(
            Gzip::diff(b"", &bomb, 0),
            Err(Error::Unsupported(_))
        ));
        let new = gzip(b"small", 9);
        let d = Gzip::diff(&bomb, &new, 0).unwrap();
        assert_eq!(d[8] & OLD_INFLATED, 0);
        assert_eq!(Gzip::patch(&bomb, &d).unwrap(), new);
    }

    /// `raw` deflated as GNU gzip does it: level 9, 32K-symbol blocks, ended at `ends`.
    fn gnu_gzip(raw: &[u8], ends: &[u64]) -> Vec<u8> {
        let setting = Setting {
            level: 9,
            mem_level: 8,
            ends: ends.to_vec(),
        };
        member(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3], raw, &setting)
    }

    #[test]
    fn streams_with_blocks_ended_elsewhere_are_rebuilt_from_recorded_ends() {
        let old_raw = text(7, 300_000);
        let mut new_raw = b"version 2\n".to_vec();
        new_raw.extend_from_slice(&old_raw);
        let (old, new) = (
            gnu_gzip(&old_raw, &[20_000, 150_000]),
            gnu_gzip(&new_raw, &[20_010, 150_010, 290_000]),
        );
        // No plain zlib setting makes these blocks.
        assert!(!reproduces(
            &new_raw,
            &Deflater::Zlib(Setting {
                level: 9,
                mem_level: 8,
                ends: vec![]
            }),
            &new[10..new.len() - 8]
        )
        .unwrap());
        let d = Gzip::diff(&old, &new, 0).unwrap();
        assert_eq!(d[8], OLD_INFLATED | BLOCK_ENDS);
        assert!(d.len() < 300, "delta {} bytes", d.len());
        assert_eq!(Gzip::patch(&old, &d).unwrap(), new);
        // A block end that does not move forward is refused. The three ends
        // take three varint bytes each, after the count at byte 11.
        let mut bad = d[..11].to_vec();
        bad.extend_from_slice(&[2, 100, 0]);
        bad.extend_from_slice(&d[21..]);
        let e = Gzip::patch(&old, &bad);
        assert!(
            matches!(&e, Err(Error::InvalidInput(m)) if m.contains("block ends")),
            "{e:?}"
        );
    }

    /// Go's compress/gzip output (go/make-fixtures): the input at levels
    /// 6, 1 and 2, and an edited input at 6.
    const GO_FIXTURES: [(&[u8], u8); 3] = [
        (include_bytes!("../go/fixtures/v1-go6.gz"), 6),
        (include_bytes!("../go/fixtures/v1-go1.gz"), 1),
        (include_bytes!("../go/fixtures/v1-go2.gz"), 2),
    ];

    #[test]
    fn go_streams_are_rebuilt_bit_for_bit_at_their_level() {
        let (_, v1) = gunzip_exact(GO_FIXTURES[0].0).unwrap().unwrap();
        for (file, level) in GO_FIXTURES {
            // As convert makes a recipe: the tar (here the content) as base.
            let d = Gzip::diff(&v1.raw, file, 1).unwrap();
            assert_eq!(d[8..11], [GO, level, 0], "level {level}");
            assert!(d.len() < 200, "level {level}: delta {} bytes", d.len());
            assert_eq!(Gzip::patch(&v1.raw, &d).unwrap(), file);
        }
        // The port itself, with no codec around it: Go's bytes exactly.
        for (file, level) in GO_FIXTURES {
            let mut out = file[..10].to_vec();
            assert!(deflate(&v1.raw, &Deflater::Go(level), |p| {
                out.extend_from_slice(p);
                true
            })
            .unwrap());
            out.extend_from_slice(&trailer(&v1.raw));
            assert!(
                out == file,
                "level {level}: {} bytes, Go wrote {}",
                out.len(),
                file.len()
            );
        }
    }

    #[test]
    fn an_edited_go_file_is_a_small_delta() {
        let (old, new) = (GO_FIXTURES[0].0, include_bytes!("../go/fixtures/v2-go6.gz"));
        let d = Gzip::diff(old, new, 0).unwrap();
        assert_eq!(d[8], OLD_INFLATED | GO);
        assert!(d.len() < 300, "delta {} bytes", d.len());
        assert_eq!(Gzip::patch(old, &d).unwrap(), new);
    }

    #[test]
    fn go_settings_are_checked() {
        let (_, v1) = gunzip_exact(GO_FIXTURES[0].0).unwrap().unwrap();
        let d = Gzip::diff(&v1.raw, GO_FIXTURES[0].0, 1).unwrap();
        for (at, value) in [(9, 10), (10, 8), (8, GO | BLOCK_ENDS)] {
            let mut bad = d.clone();
            bad[at] = value;
            let e = Gzip::patch(&v1.raw, &bad);
            assert!(
                matches!(&e, Err(Error::InvalidInput(m)) if m.contains("bad settings")),
                "byte {at} = {value}: {e:?}"
            );
        }
        // Another valid level decodes, to other bytes than the file.
        let mut other = d.clone();
        other[9] = 1;
        assert_ne!(Gzip::patch(&v1.raw, &other).unwrap(), GO_FIXTURES[0].0);
    }

    /// klauspost/pgzip's output (go/make-fixtures) with 150000-byte blocks.
    const PGZIP_FIXTURES: [&[u8]; 2] = [
        include_bytes!("../go/fixtures/v1-pgzip.gz"),
        include_bytes!("../go/fixtures/v2-pgzip.gz"),
    ];

    #[test]
    fn pgzip_streams_are_rebuilt_with_the_block_size_they_show() {
        let [v1, v2] = PGZIP_FIXTURES;
        let (_, raw) = gunzip_exact(v1).unwrap().unwrap();
        let d = Gzip::diff(&raw.raw, v1, 1).unwrap();
        assert_eq!(d[8..11], [GO, 5, GO_PGZIP]);
        let mut r = varint::Reader::new(&d[11..]);
        assert_eq!(r.get().unwrap(), 150_000);
        assert!(d.len() < 200, "delta {} bytes", d.len());
        assert_eq!(Gzip::patch(&raw.raw, &d).unwrap(), v1);
        // An edited file against the old one: small.
        let d = Gzip::diff(v1, v2, 0).unwrap();
        assert!(d.len() < 300, "delta {} bytes", d.len());
        assert_eq!(Gzip::patch(v1, &d).unwrap(), v2);
    }

    #[test]
    fn pgzip_settings_are_checked() {
        let (_, raw) = gunzip_exact(PGZIP_FIXTURES[0]).unwrap().unwrap();
        let d = Gzip::diff(&raw.raw, PGZIP_FIXTURES[0], 1).unwrap();
        // Another level, a block size at or under the tail pgzip primes
        // blocks with, a block size past the content limit.
        let mut bad_level = d.clone();
        bad_level[9] = 6;
        let mut tiny = d[..11].to_vec();
        varint::put(&mut tiny, 16384);
        let mut huge = d[..11].to_vec();
        varint::put(&mut huge, MAX_RAW as u64 + 1);
        for bad in [bad_level, tiny, huge] {
            let e = Gzip::patch(&raw.raw, &bad);
            assert!(matches!(&e, Err(Error::InvalidInput(_))), "{e:?}");
        }
        // Another valid block size decodes, to other bytes than the file.
        let mut other = d[..11].to_vec();
        varint::put(&mut other, 1 << 20);
        other.extend_from_slice(&d[14..]);
        assert_ne!(Gzip::patch(&raw.raw, &other).unwrap(), PGZIP_FIXTURES[0]);
    }

    #[test]
    fn corrupt_deltas_are_errors() {
        let raw = text(5, 20_000);
        let (old, new) = (gzip(&raw, 9), gzip(&text(6, 20_000), 9));
        let d = Gzip::diff(&old, &new, 0).unwrap();
        for cut in [0, 8, 10, 12, 20, d.len() - 1] {
            assert!(Gzip::patch(&old, &d[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = d.clone();
        bad[10] = 0; // level 0
        assert!(matches!(
            Gzip::patch(&old, &bad),
            Err(Error::InvalidInput(_))
        ));
    }
}
