//! Incremental `Content-Encoding` decoding for the log only (the relayed
//! bytes are never touched).
//!
//! [`Decoder::feed`] takes one compressed chunk and hands the decoded bytes
//! to a callback in pieces of at most [`OUT_CHUNK`] bytes, so nothing the size
//! of the decoded body is ever allocated. The caller says how many decoded
//! bytes it still wants ([`Decoder::feed`]'s `budget`): once that is spent
//! the decoder stops working, which is what keeps a gzip bomb cheap.
//!
//! Memory: gzip/deflate hold a 32 KiB window plus a 32 KiB output buffer;
//! brotli holds the window the stream declares (at most 16 MiB: large-window
//! brotli is refused) plus a 32 KiB output buffer.

use std::io::Write;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Largest piece handed to the callback in one call.
pub const OUT_CHUNK: usize = 32 * 1024;

/// What a `Content-Encoding` header asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950) or raw (RFC 1951), told apart by
    /// the first two bytes.
    Deflate,
    Brotli,
    /// Anything else (or a list of several codings): not decoded.
    Unknown,
}

impl Encoding {
    pub fn parse(header: Option<&str>) -> Encoding {
        let Some(h) = header else {
            return Encoding::Identity;
        };
        let h = h.trim();
        if h.is_empty() || h.eq_ignore_ascii_case("identity") {
            Encoding::Identity
        } else if h.eq_ignore_ascii_case("gzip") || h.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else if h.eq_ignore_ascii_case("deflate") {
            Encoding::Deflate
        } else if h.eq_ignore_ascii_case("br") {
            Encoding::Brotli
        } else {
            Encoding::Unknown
        }
    }
}

/// Collects what a flate2 write-side decoder produces; drained after every
/// `write` + `flush` (each produces about one 32 KiB buffer).
#[derive(Debug, Default)]
struct Collect(Vec<u8>);

impl Write for Collect {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Brotli = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

enum Inner {
    Gzip(Box<GzDecoder<Collect>>),
    /// `deflate` before its first two bytes arrived.
    DeflatePending(Vec<u8>),
    Zlib(Box<ZlibDecoder<Collect>>),
    Raw(Box<DeflateDecoder<Collect>>),
    Brotli(Box<Brotli>, Vec<u8>),
    Done,
}

/// Why decoding stopped early, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The stream is corrupt (or not what the header said).
    Corrupt,
    /// The caller's budget was spent.
    Budget,
}

/// An incremental decoder for one of the supported codings.
pub struct Decoder {
    inner: Inner,
    stopped: Option<Stop>,
    decoded: u64,
}

impl Decoder {
    /// `None` for identity and unknown codings (nothing to decode).
    pub fn new(enc: Encoding) -> Option<Decoder> {
        let inner = match enc {
            Encoding::Gzip => Inner::Gzip(Box::new(GzDecoder::new(Collect::default()))),
            Encoding::Deflate => Inner::DeflatePending(Vec::with_capacity(2)),
            Encoding::Brotli => {
                let mut st = Brotli::new(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                );
                st.large_window = false;
                Inner::Brotli(Box::new(st), vec![0; OUT_CHUNK])
            }
            Encoding::Identity | Encoding::Unknown => return None,
        };
        Some(Decoder {
            inner,
            stopped: None,
            decoded: 0,
        })
    }

    /// Why decoding stopped, if it did.
    pub fn stopped(&self) -> Option<Stop> {
        self.stopped
    }

    /// Decoded bytes produced so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Decodes `input`, passing decoded pieces to `out`. Stops (for good)
    /// once more than `budget` decoded bytes were produced in total.
    pub fn feed(&mut self, input: &[u8], budget: u64, out: &mut dyn FnMut(&[u8])) {
        if self.stopped.is_some() || input.is_empty() {
            return;
        }
        if let Inner::DeflatePending(head) = &mut self.inner {
            let need = 2 - head.len();
            let take = need.min(input.len());
            head.extend_from_slice(&input[..take]);
            if head.len() < 2 {
                return;
            }
            let head = std::mem::take(head);
            let zlib = (head[0] & 0x0f) == 8
                && (head[0] >> 4) <= 7
                && (u16::from(head[0]) * 256 + u16::from(head[1])) % 31 == 0;
            self.inner = if zlib {
                Inner::Zlib(Box::new(ZlibDecoder::new(Collect::default())))
            } else {
                Inner::Raw(Box::new(DeflateDecoder::new(Collect::default())))
            };
            self.feed(&head, budget, out);
            self.feed(&input[take..], budget, out);
            return;
        }
        let mut pos = 0;
        while pos < input.len() && self.stopped.is_none() {
            if self.decoded > budget {
                self.stop(Stop::Budget);
                break;
            }
            let rest = &input[pos..];
            let step = match &mut self.inner {
                Inner::Gzip(d) => flate_step(d.as_mut(), |d| d.get_mut(), rest, out),
                Inner::Zlib(d) => flate_step(d.as_mut(), |d| d.get_mut(), rest, out),
                Inner::Raw(d) => flate_step(d.as_mut(), |d| d.get_mut(), rest, out),
                Inner::Brotli(st, buf) => brotli_step(st, buf, rest, out),
                Inner::DeflatePending(_) | Inner::Done => Step::End(0),
            };
            match step {
                Step::Progress { consumed, produced } => {
                    pos += consumed;
                    self.decoded += produced as u64;
                }
                Step::End(produced) => {
                    // End of the compressed stream: trailing bytes are ignored.
                    self.decoded += produced as u64;
                    self.inner = Inner::Done;
                    break;
                }
                Step::Corrupt => self.stop(Stop::Corrupt),
            }
        }
        if self.decoded > budget {
            self.stop(Stop::Budget);
        }
    }

    fn stop(&mut self, why: Stop) {
        self.stopped = Some(why);
        self.inner = Inner::Done; // free the window now
    }
}

enum Step {
    Progress { consumed: usize, produced: usize },
    End(usize),
    Corrupt,
}

fn flate_step<D: Write>(
    d: &mut D,
    sink: impl Fn(&mut D) -> &mut Collect,
    input: &[u8],
    out: &mut dyn FnMut(&[u8]),
) -> Step {
    // flate2 keeps the last decoded piece in its own buffer until the next
    // call: flush hands it over now, so a body's end is never held back.
    let r = d.write(input).and_then(|n| d.flush().map(|()| n));
    let produced = {
        let c = sink(d);
        let n = c.0.len();
        for piece in c.0.chunks(OUT_CHUNK) {
            out(piece);
        }
        c.0.clear();
        if c.0.capacity() > 2 * OUT_CHUNK {
            c.0.shrink_to(OUT_CHUNK);
        }
        n
    };
    match r {
        Ok(0) => Step::End(produced),
        Ok(consumed) => Step::Progress { consumed, produced },
        Err(_) => Step::Corrupt,
    }
}

fn brotli_step(st: &mut Brotli, buf: &mut [u8], input: &[u8], out: &mut dyn FnMut(&[u8])) -> Step {
    let mut avail_in = input.len();
    let mut in_off = 0;
    let mut avail_out = buf.len();
    let mut out_off = 0;
    let mut total = 0;
    let r = BrotliDecompressStream(
        &mut avail_in,
        &mut in_off,
        input,
        &mut avail_out,
        &mut out_off,
        buf,
        &mut total,
        st,
    );
    if out_off > 0 {
        out(&buf[..out_off]);
    }
    match r {
        BrotliResult::ResultSuccess => Step::End(out_off),
        BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => {
            if in_off == 0 && out_off == 0 {
                // No progress at all: treat as corrupt rather than spin.
                Step::Corrupt
            } else {
                Step::Progress {
                    consumed: in_off,
                    produced: out_off,
                }
            }
        }
        BrotliResult::ResultFailure => Step::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use flate2::Compression;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_all(enc: Encoding, data: &[u8], chunk: usize, budget: u64) -> (Vec<u8>, Decoder) {
        let mut d = Decoder::new(enc).unwrap();
        let mut got = Vec::new();
        for c in data.chunks(chunk) {
            d.feed(c, budget, &mut |p| got.extend_from_slice(p));
        }
        (got, d)
    }

    #[test]
    fn gzip_zlib_raw_round_trip_at_any_chunking() {
        let data = br#"{"hello":"world","n":[1,2,3]}"#.repeat(50);
        let z = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        for chunk in [1, 2, 7, 4096] {
            for (enc, bytes) in [
                (Encoding::Gzip, gzip(&data)),
                (Encoding::Deflate, z.clone()),
                (Encoding::Deflate, raw.clone()),
            ] {
                let (got, d) = decode_all(enc, &bytes, chunk, u64::MAX);
                assert_eq!(got, data, "{enc:?} chunk {chunk}");
                assert_eq!(d.stopped(), None);
            }
        }
    }

    #[test]
    fn corrupt_gzip_stops() {
        let (_, d) = decode_all(Encoding::Gzip, b"not gzip at all, sorry", 4, u64::MAX);
        assert_eq!(d.stopped(), Some(Stop::Corrupt));
    }

    #[test]
    fn encoding_names() {
        assert_eq!(Encoding::parse(None), Encoding::Identity);
        assert_eq!(Encoding::parse(Some(" GZIP ")), Encoding::Gzip);
        assert_eq!(Encoding::parse(Some("br")), Encoding::Brotli);
        assert_eq!(Encoding::parse(Some("deflate")), Encoding::Deflate);
        assert_eq!(Encoding::parse(Some("zstd")), Encoding::Unknown);
        assert_eq!(Encoding::parse(Some("gzip, br")), Encoding::Unknown);
    }
}
