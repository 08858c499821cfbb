//! Canonical, length-bounded binary encoding for everything medledger hashes or signs.
//!
//! Architecture invariant: every value has exactly one encoding. Integers are fixed-width
//! big-endian, variable-length fields carry a `u32` big-endian length and a caller-supplied
//! maximum, booleans are exactly 0 or 1, enum tags are checked, strings are UTF-8, and
//! [`decode_exact`] rejects trailing bytes. Decoding never panics and never allocates more
//! than the declared maximum, whatever the input.

use medledger_types::{Hash, IdentityId, RecordId, TxId};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("unexpected end of input while reading {0}")]
    UnexpectedEnd(&'static str),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("{what} has length {got}, above the maximum {max}")]
    TooLong { what: &'static str, got: usize, max: usize },
    #[error("invalid tag {tag} for {what}")]
    InvalidTag { what: &'static str, tag: u8 },
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
}

/// Appends canonical encodings to a byte vector.
#[derive(Default, Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize) -> Self {
        Self { buf: Vec::with_capacity(bytes) }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Raw bytes of a length both sides know (hashes, keys, signatures).
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// `u32` length, then the bytes. The caller has already enforced its maximum.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).expect("encoded field longer than u32::MAX");
        self.u32(len);
        self.fixed(bytes)
    }

    pub fn str(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes())
    }

    /// `u32` count, then each item.
    pub fn seq<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) -> &mut Self {
        let len = u32::try_from(items.len()).expect("sequence longer than u32::MAX");
        self.u32(len);
        for item in items {
            each(self, item);
        }
        self
    }

    /// Option as a presence byte (0 or 1) and then the value.
    pub fn option<T>(&mut self, value: &Option<T>, each: impl FnOnce(&mut Self, &T)) -> &mut Self {
        match value {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                each(self, v);
                self
            }
        }
    }

    pub fn encode<T: Encode + ?Sized>(&mut self, value: &T) -> &mut Self {
        value.encode(self);
        self
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical encodings from a byte slice, enforcing limits.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::UnexpectedEnd(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(CodecError::InvalidTag { what, tag }),
        }
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(CodecError::TooLong { what, got: len, max });
        }
        self.take(len, what)
    }

    pub fn string(&mut self, max: usize, what: &'static str) -> Result<String, CodecError> {
        let raw = self.bytes(max, what)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| CodecError::InvalidUtf8(what))
    }

    /// A counted sequence of at most `max` items.
    pub fn seq<T>(
        &mut self,
        max: usize,
        what: &'static str,
        mut each: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(CodecError::TooLong { what, got: len, max });
        }
        // Each item takes at least one byte, so a lying count cannot make us over-allocate.
        let mut out = Vec::with_capacity(len.min(self.remaining()));
        for _ in 0..len {
            out.push(each(self)?);
        }
        Ok(out)
    }

    pub fn option<T>(
        &mut self,
        what: &'static str,
        each: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        if self.bool(what)? { Ok(Some(each(self)?)) } else { Ok(None) }
    }

    pub fn decode<T: Decode>(&mut self) -> Result<T, CodecError> {
        T::decode(self)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() { Ok(()) } else { Err(CodecError::TrailingBytes(self.buf.len())) }
    }
}

/// A value with one canonical encoding.
pub trait Encode {
    fn encode(&self, w: &mut Writer);

    fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }
}

/// A value that can be read back from its canonical encoding.
pub trait Decode: Sized {
    fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError>;
}

/// Decodes a whole buffer, rejecting trailing bytes.
pub fn decode_exact<T: Decode>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut r = Reader::new(bytes);
    let value = T::decode(&mut r)?;
    r.finish()?;
    Ok(value)
}

macro_rules! fixed32 {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.fixed(&self.0);
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
                Ok(Self(r.array(stringify!($t))?))
            }
        }
    )*};
}
fixed32!(Hash, IdentityId, RecordId, TxId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian_and_round_trip() {
        let mut w = Writer::new();
        w.u8(1).u16(0x0203).u32(0x04050607).u64(0x08090a0b0c0d0e0f).bool(true);
        let bytes = w.into_bytes();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 0x0203);
        assert_eq!(r.u32("c").unwrap(), 0x04050607);
        assert_eq!(r.u64("d").unwrap(), 0x08090a0b0c0d0e0f);
        assert!(r.bool("e").unwrap());
        r.finish().unwrap();
    }

    #[test]
    fn rejects_non_canonical_and_hostile_input() {
        assert_eq!(Reader::new(&[2]).bool("flag"), Err(CodecError::InvalidTag { what: "flag", tag: 2 }));
        // A length above the maximum is refused before anything is read or allocated.
        let mut w = Writer::new();
        w.u32(u32::MAX);
        assert!(matches!(
            Reader::new(&w.into_bytes()).bytes(16, "name"),
            Err(CodecError::TooLong { got, max: 16, .. }) if got == u32::MAX as usize
        ));
        // A sequence claiming many items on a short buffer ends cleanly.
        let mut w = Writer::new();
        w.u32(10);
        assert_eq!(
            Reader::new(&w.into_bytes()).seq(100, "items", |r| r.u64("item")),
            Err(CodecError::UnexpectedEnd("item"))
        );
        assert_eq!(Reader::new(&[0, 0, 0, 2, 0xff, 0xfe]).string(8, "name"), Err(CodecError::InvalidUtf8("name")));
        assert_eq!(decode_exact::<Hash>(&[0u8; 33]), Err(CodecError::TrailingBytes(1)));
        assert_eq!(decode_exact::<Hash>(&[0u8; 31]), Err(CodecError::UnexpectedEnd("Hash")));
    }

    #[test]
    fn options_and_strings_round_trip() {
        let mut w = Writer::new();
        w.option(&Some(7u64), |w, v| {
            w.u64(*v);
        })
        .option(&None::<u64>, |w, v| {
            w.u64(*v);
        })
        .str("héllo");
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.option("a", |r| r.u64("v")).unwrap(), Some(7));
        assert_eq!(r.option("b", |r| r.u64("v")).unwrap(), None);
        assert_eq!(r.string(16, "s").unwrap(), "héllo");
        r.finish().unwrap();
    }
}
