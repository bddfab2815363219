//! A tiny zero-copy reader for deterministically encoded CBOR (RFC 8949 §4.2.1).
//!
//! The fold reads every log record, so it cannot afford a generic `Value` tree per event. This
//! reader walks the bytes in place and refuses anything that is not in the one deterministic
//! form pairbus writes (non-shortest heads, indefinite lengths), so what it accepts is what
//! `pairbus_schemas::cbor::decode_strict` accepts for the shapes the projector reads.

/// Major types used by pairbus payloads.
pub(crate) const UINT: u8 = 0;
pub(crate) const NINT: u8 = 1;
pub(crate) const BYTES: u8 = 2;
pub(crate) const TEXT: u8 = 3;
pub(crate) const ARRAY: u8 = 4;
pub(crate) const MAP: u8 = 5;
pub(crate) const TAG: u8 = 6;
pub(crate) const SIMPLE: u8 = 7;

/// A cursor over CBOR bytes. Every method returns `None` on malformed or non-deterministic input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next head: (major type, argument), shortest form only, definite lengths only.
    #[inline]
    pub(crate) fn head(&mut self) -> Option<(u8, u64)> {
        let b = self.byte()?;
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.byte()?);
                (v >= 24 || major == SIMPLE).then_some(v)?
            }
            25 => {
                let s = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([s[0], s[1]]));
                (v > 0xff && major != SIMPLE).then_some(v)?
            }
            26 => {
                let s = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
                (v > 0xffff && major != SIMPLE).then_some(v)?
            }
            27 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                let v = u64::from_be_bytes(a);
                (v > 0xffff_ffff && major != SIMPLE).then_some(v)?
            }
            _ => return None,
        };
        Some((major, arg))
    }

    /// Peeks at the next major type.
    #[inline]
    pub(crate) fn peek_major(&self) -> Option<u8> {
        self.buf.get(self.pos).map(|b| b >> 5)
    }

    #[inline]
    pub(crate) fn uint(&mut self) -> Option<u64> {
        match self.head()? {
            (UINT, v) => Some(v),
            _ => None,
        }
    }

    /// A signed integer in the i64 range.
    #[inline]
    pub(crate) fn int(&mut self) -> Option<i64> {
        match self.head()? {
            (UINT, v) => i64::try_from(v).ok(),
            (NINT, v) => i64::try_from(v).ok().map(|v| -1 - v),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        match self.head()? {
            (BYTES, n) => self.take(usize::try_from(n).ok()?),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn bytes_n<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes()?.try_into().ok()
    }

    #[inline]
    pub(crate) fn text(&mut self) -> Option<&'a str> {
        match self.head()? {
            (TEXT, n) => std::str::from_utf8(self.take(usize::try_from(n).ok()?)?).ok(),
            _ => None,
        }
    }

    /// A text string's bytes, without the UTF-8 check.
    #[inline]
    pub(crate) fn text_bytes(&mut self) -> Option<&'a [u8]> {
        match self.head()? {
            (TEXT, n) => self.take(usize::try_from(n).ok()?),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn map_len(&mut self) -> Option<u64> {
        match self.head()? {
            (MAP, n) => Some(n),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn array_len(&mut self) -> Option<u64> {
        match self.head()? {
            (ARRAY, n) => Some(n),
            _ => None,
        }
    }

    /// A boolean (simple values 20 and 21).
    #[inline]
    pub(crate) fn boolean(&mut self) -> Option<bool> {
        match self.head()? {
            (SIMPLE, 20) => Some(false),
            (SIMPLE, 21) => Some(true),
            _ => None,
        }
    }

    /// Skips one whole item (no floats or tags: pairbus never writes them), returning its bytes.
    #[inline]
    pub(crate) fn skip(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        self.skip_depth(0)?;
        Some(&self.buf[start..self.pos])
    }

    #[inline]
    fn skip_depth(&mut self, depth: u32) -> Option<()> {
        if depth > 16 {
            return None;
        }
        match self.head()? {
            (UINT | NINT, _) => {}
            (BYTES | TEXT, n) => {
                self.take(usize::try_from(n).ok()?)?;
            }
            (ARRAY, n) => {
                for _ in 0..n {
                    self.skip_depth(depth + 1)?;
                }
            }
            (MAP, n) => {
                for _ in 0..n {
                    self.skip_depth(depth + 1)?;
                    self.skip_depth(depth + 1)?;
                }
            }
            (SIMPLE, 20..=22) => {}
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[inline]
    fn refuses_non_shortest_heads_and_reads_shortest_ones() {
        assert_eq!(Reader::new(&[0x18, 0x01]).uint(), None);
        assert_eq!(Reader::new(&[0x18, 0x18]).uint(), Some(24));
        assert_eq!(Reader::new(&[0x19, 0x00, 0xff]).uint(), None);
        assert_eq!(Reader::new(&[0x19, 0x01, 0x00]).uint(), Some(256));
        assert_eq!(Reader::new(&[0x20]).int(), Some(-1));
        assert_eq!(Reader::new(&[0x5f]).bytes(), None, "indefinite length");
        assert_eq!(Reader::new(&[0x43, 1, 2]).bytes(), None, "truncated");
        assert_eq!(Reader::new(&[0xf5]).boolean(), Some(true));
    }
}
