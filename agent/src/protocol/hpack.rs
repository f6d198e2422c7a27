//! HPACK (RFC 7541): the header compression of HTTP/2, decoded to read header blocks.
//!
//! Each direction of a connection has a dynamic table that its header blocks fill, and a block
//! may name the table's entries by index: every block must be decoded, in order, from the
//! connection's start. Strings may be Huffman-coded (the code of the RFC's Appendix B); they are
//! decoded with a canonical-code walk over tables built at compile time, into buffers the decoder
//! keeps, so a block costs no allocation beyond the entries it adds to its table. Bad input is an
//! error, never a panic: integers are bounded, indexes checked, strings checked against the
//! block's end, and the table is bounded by the size the peer may ask for.
use std::collections::VecDeque;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer longer than HPACK allows here")]
    IntegerOverflow,
    #[error("an index naming no table entry")]
    BadIndex,
    #[error("a Huffman string that is not valid")]
    BadHuffman,
    #[error("a table size update beyond the limit, or after a field")]
    BadSizeUpdate,
}

/// The static table (RFC 7541 Appendix A): index 1 to 61.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The length in bits of each symbol's code (0 to 255, then 256: EOS) in the Huffman code of
/// RFC 7541 Appendix B. The code is canonical (the codes of one length are consecutive, in
/// symbol order, after the shorter ones), so these lengths define it.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28,
    28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6,
    6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7,
    8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7,
    15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24,
    23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23,
    23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26,
    26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20,
    21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27,
    27, 27, 26, 30,
];

/// The longest code.
const MAX_BITS: usize = 30;
/// The shortest code.
const MIN_BITS: usize = 5;

/// Canonical decoding tables: for each length, its first code, how many codes it has, and where
/// its symbols start in `symbols` (sorted by length, then value).
struct Canonical {
    first: [u32; MAX_BITS + 1],
    count: [u32; MAX_BITS + 1],
    offset: [u32; MAX_BITS + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut t = Canonical {
        first: [0; MAX_BITS + 1],
        count: [0; MAX_BITS + 1],
        offset: [0; MAX_BITS + 1],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        t.count[HUFFMAN_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut offset, mut len) = (0u32, 0u32, 1);
    while len <= MAX_BITS {
        t.first[len] = code;
        t.offset[len] = offset;
        code = (code + t.count[len]) << 1;
        offset += t.count[len];
        len += 1;
    }
    let mut filled = [0u32; MAX_BITS + 1];
    let mut s = 0;
    while s < 257 {
        let l = HUFFMAN_LENGTHS[s] as usize;
        t.symbols[(t.offset[l] + filled[l]) as usize] = s as u16;
        filled[l] += 1;
        s += 1;
    }
    t
}

static CANONICAL: Canonical = canonical();

/// Appends the Huffman-decoded `src` to `out`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = &CANONICAL;
    // Bits not yet decoded, most significant first, and how many.
    let (mut acc, mut n) = (0u64, 0usize);
    let mut bytes = src.iter();
    loop {
        while n <= 56 {
            match bytes.next() {
                Some(&b) => {
                    acc = acc << 8 | u64::from(b);
                    n += 8;
                }
                None => break,
            }
        }
        if n < MIN_BITS {
            break;
        }
        // Walk the lengths: a code of length `len` is its first `len` bits.
        let mut len = MIN_BITS;
        let symbol = loop {
            if len > n {
                break None;
            }
            let code = (acc >> (n - len)) as u32 & ((1u32 << len) - 1);
            let rel = code.wrapping_sub(t.first[len]);
            if rel < t.count[len] {
                break Some(t.symbols[(t.offset[len] + rel) as usize]);
            }
            len += 1;
            if len > MAX_BITS {
                return Err(HpackError::BadHuffman);
            }
        };
        match symbol {
            // EOS in a string is an error.
            Some(256) => return Err(HpackError::BadHuffman),
            Some(s) => {
                out.push(s as u8);
                n -= len;
                acc &= (1u64 << n) - 1;
            }
            // Fewer bits left than the code needs: the padding.
            None => break,
        }
    }
    // Padding: fewer than 8 bits, all ones (the start of EOS).
    if n >= 8 || acc != (1u64 << n) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

/// Reads an integer with an `prefix`-bit prefix at `*at`.
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let first = *block.get(*at).ok_or(HpackError::Truncated)?;
    *at += 1;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    // At most 4 continuation bytes: values up to 2^28 and more, far beyond any size or index.
    for shift in [0, 7, 14, 21] {
        let b = *block.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// A string's bytes: raw ones from the block, Huffman ones decoded into `buf`.
fn string<'b>(block: &'b [u8], at: &mut usize, buf: &'b mut Vec<u8>) -> Result<&'b [u8], HpackError> {
    let huffman = block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).filter(|&e| e <= block.len()).ok_or(HpackError::Truncated)?;
    let raw = &block[*at..end];
    *at = end;
    if !huffman {
        return Ok(raw);
    }
    buf.clear();
    huffman_decode(raw, buf)?;
    Ok(buf)
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One direction's decoding state: its dynamic table.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first (index 62).
    entries: VecDeque<Entry>,
    /// The entries' size as RFC 7541 counts it (32 bytes each besides name and value).
    size: usize,
    /// The table's current maximum size (the encoder's choice, 4096 until it says otherwise).
    max: usize,
    /// The largest size the encoder may choose.
    limit: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

/// An entry's overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The table's size at a connection's start (SETTINGS_HEADER_TABLE_SIZE's default).
const INITIAL_SIZE: usize = 4096;

impl Decoder {
    /// A table the encoder may grow to `limit` bytes.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: INITIAL_SIZE.min(limit),
            limit,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max {
            // Larger than the table: it empties it and is not kept (§4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.entries.push_front((name.into(), value.into()));
        self.size += size;
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self.entries.get(index - 62).map(|(n, v)| (&n[..], &v[..])).ok_or(HpackError::BadIndex),
        }
    }

    /// A literal field whose name is entry `index` (0: a literal name too), kept in the table
    /// when `indexing`. Strings are decoded into `bufs` (the decoder's, lent for the call).
    fn literal(
        &mut self,
        block: &[u8],
        at: &mut usize,
        index: usize,
        indexing: bool,
        (name_buf, value_buf): (&mut Vec<u8>, &mut Vec<u8>),
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let name: &[u8] = if index == 0 {
            string(block, at, name_buf)?
        } else {
            let (n, _) = self.entry(index)?;
            name_buf.clear();
            name_buf.extend_from_slice(n);
            name_buf
        };
        let value = string(block, at, value_buf)?;
        field(name, value);
        if indexing {
            self.insert(name, value);
        }
        Ok(())
    }

    /// Decodes a header block, calling `field(name, value)` for each field in order.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut at, 7)?;
                let (n, v) = self.entry(index)?;
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the block's fields.
                let size = integer(block, &mut at, 5)?;
                if fields || size > self.limit {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max = size;
                self.evict_to(size);
                continue;
            } else {
                // A literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = b & 0x40 != 0;
                let index = integer(block, &mut at, if indexing { 6 } else { 4 })?;
                let mut name_buf = std::mem::take(&mut self.name_buf);
                let mut value_buf = std::mem::take(&mut self.value_buf);
                let r = self.literal(
                    block,
                    &mut at,
                    index,
                    indexing,
                    (&mut name_buf, &mut value_buf),
                    &mut field,
                );
                self.name_buf = name_buf;
                self.value_buf = value_buf;
                r?;
            }
            fields = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
    }

    fn huffman(s: &str) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::new();
        huffman_decode(&hex(s), &mut out).map(|()| out)
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
        })?;
        Ok(out)
    }

    #[test]
    fn the_rfc_examples_decode() {
        // RFC 7541 C.4: Huffman-coded requests sharing one table.
        assert_eq!(huffman("f1e3 c2e5 f23a 6ba0 ab90 f4ff").as_deref(), Ok(&b"www.example.com"[..]));
        assert_eq!(huffman("a8eb 1064 9cbf").as_deref(), Ok(&b"no-cache"[..]));
        let mut d = Decoder::new(4096);
        let first = fields(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap_or_default();
        let pairs =
            |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let second = fields(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap_or_default();
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = fields(&mut d, &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"))
            .unwrap_or_default();
        assert_eq!(third[4], ("custom-key".to_string(), "custom-value".to_string()));
        assert_eq!((d.entries.len(), d.size), (3, 164));
    }

    #[test]
    fn every_symbol_decodes_as_the_reference_decoder_does() {
        // Each byte value alone, then random strings: the same result as loona-hpack's decoder
        // (or both reject them), which builds its tables from the RFC's code list.
        let reference = |bytes: &[u8]| loona_hpack::huffman::HuffmanDecoder::new().decode(bytes).ok();
        let mut rng = fastrand::Rng::with_seed(11);
        for i in 0..4000 {
            let n = if i < 256 { 1 + i % 4 } else { rng.usize(0..24) };
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            let mut ours = Vec::new();
            let ours = huffman_decode(&bytes, &mut ours).ok().map(|()| ours);
            assert_eq!(ours, reference(&bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn every_code_is_the_reference_decoders() {
        // Each symbol's code from our canonical tables, padded with ones: the reference decoder
        // reads it as that symbol, and so do we.
        let t = &CANONICAL;
        for s in 0..256u16 {
            let len = HUFFMAN_LENGTHS[s as usize] as usize;
            let rank = (t.offset[len]..t.offset[len] + t.count[len]).position(|i| t.symbols[i as usize] == s);
            let code = t.first[len] + rank.unwrap_or(0) as u32;
            let bits = len.div_ceil(8) * 8;
            let padded = (u64::from(code) << (bits - len)) | ((1u64 << (bits - len)) - 1);
            let bytes: Vec<u8> = (0..bits / 8).rev().map(|i| (padded >> (8 * i)) as u8).collect();
            let reference = loona_hpack::huffman::HuffmanDecoder::new().decode(&bytes).ok();
            assert_eq!(reference.as_deref(), Some(&[s as u8][..]), "symbol {s}");
            let mut ours = Vec::new();
            assert_eq!(huffman_decode(&bytes, &mut ours), Ok(()));
            assert_eq!(ours, [s as u8]);
        }
    }

    #[test]
    fn blocks_decode_as_the_reference_decoder_does() {
        // Blocks an encoder made (indexed and literal fields, the table filling and evicting),
        // then the same blocks with bytes flipped: both decoders agree field by field, or both fail.
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..300 {
            let mut enc = loona_hpack::Encoder::new();
            let mut theirs = loona_hpack::Decoder::new();
            let mut ours = Decoder::new(65536);
            for _ in 0..8 {
                let headers: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.usize(1..6))
                    .map(|_| {
                        let name = [&b":path"[..], b"content-type", b"x-id", b"grpc-status", b"user-agent"]
                            [rng.usize(0..5)];
                        let value: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(b'a'..=b'z')).collect();
                        (name.to_vec(), value)
                    })
                    .collect();
                let mut block = enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
                if round % 3 == 0 && !block.is_empty() {
                    let at = rng.usize(0..block.len());
                    block[at] ^= 1 << rng.u8(0..8);
                }
                let a = theirs.decode(&block).ok();
                let mut got = Vec::new();
                let b = ours.decode(&block, |n, v| got.push((n.to_vec(), v.to_vec()))).ok().map(|()| got);
                assert_eq!(a.is_some(), b.is_some(), "round {round}");
                if a.is_none() {
                    break;
                }
                assert_eq!(a, b, "round {round}");
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut d = Decoder::new(4096);
        assert_eq!(d.decode(&[0x80], |_, _| {}), Err(HpackError::BadIndex));
        assert_eq!(d.decode(&[0xbe], |_, _| {}), Err(HpackError::BadIndex));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], |_, _| {}),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(d.decode(&[0x40, 0x05, b'a'], |_, _| {}), Err(HpackError::Truncated));
        assert_eq!(d.decode(&[0x3f, 0xe1, 0xff, 0x03], |_, _| {}), Err(HpackError::BadSizeUpdate));
        assert_eq!(d.decode(&[0x82, 0x20], |_, _| {}), Err(HpackError::BadSizeUpdate), "after a field");
        // EOS, and padding that is not ones.
        assert_eq!(huffman("ff ff ff fc"), Err(HpackError::BadHuffman));
        assert_eq!(huffman("00"), Err(HpackError::BadHuffman));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..rng.usize(0..48)).map(|_| rng.u8(..)).collect();
            let _ = Decoder::new(65536).decode(&bytes, |_, _| {});
        }
    }

    #[test]
    fn the_table_stays_within_its_size() {
        let mut d = Decoder::new(4096);
        let long = vec![b'v'; 1000];
        for i in 0..20u8 {
            let mut block = vec![0x40, 3, b'k', b'e', i];
            block.push(0x7f);
            block.push((long.len() - 127) as u8 + 0x80);
            block.push(((long.len() - 127) >> 7) as u8);
            block.extend_from_slice(&long);
            assert_eq!(d.decode(&block, |_, _| {}), Ok(()));
            assert!(d.size <= 4096 && d.size == d.entries.len() * (3 + 1000 + 32));
        }
        assert_eq!(d.entries.len(), 3);
        // A size update to 0 empties it.
        assert_eq!(d.decode(&[0x20], |_, _| {}), Ok(()));
        assert_eq!((d.entries.len(), d.size), (0, 0));
    }
}
