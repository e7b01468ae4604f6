//! Message framing: every message after startup is `tag (1 byte) | length (4 bytes,
//! includes itself) | body`. The proxy forwards bytes without decoding them; only the
//! messages a caller asks for are handed over whole.

/// Size of a tagged message header.
pub const HEADER_LEN: usize = 5;

/// A tagged message header whose length field is possible: at least 4 (the length
/// counts itself) and within the limit the reader gave. [`Header::parse`] is the only
/// way to make one, so no caller can slice a frame shorter than its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length field: body plus the 4 length bytes themselves.
    len: u32,
}

/// The smallest possible length field: the 4 length bytes themselves.
pub const MIN_LEN: u32 = 4;

impl Header {
    /// Reads the header at the front of `buf`: Ok(None) until 5 bytes are there; an
    /// error for a length field below 4 or above `max_len`.
    #[inline]
    pub fn parse(buf: &[u8], max_len: u32) -> Result<Option<Header>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let (tag, len) = (buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
        if len < MIN_LEN {
            return Err(FrameError::InvalidLength { tag, len });
        }
        if len > max_len {
            return Err(FrameError::TooLarge { tag, len, max: max_len });
        }
        Ok(Some(Header { tag, len }))
    }

    /// The header of the message at the front of `buf` once all of it is buffered
    /// (Ok(None) until then); errors as [`Header::parse`].
    #[inline]
    pub fn whole(buf: &[u8], max_len: u32) -> Result<Option<Header>, FrameError> {
        Ok(Header::parse(buf, max_len)?.filter(|h| buf.len() >= h.total_len()))
    }

    /// The length field: body plus the 4 length bytes themselves.
    #[inline]
    pub fn length(&self) -> u32 {
        self.len
    }

    #[inline]
    pub fn body_len(&self) -> usize {
        (self.len - MIN_LEN) as usize
    }

    /// Header plus body.
    #[inline]
    pub fn total_len(&self) -> usize {
        self.len as usize + 1
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{}'", printable(*tag))]
    InvalidLength { tag: u8, len: u32 },
    #[error("message type '{}' of {len} bytes exceeds the limit of {max} bytes", printable(*tag))]
    TooLarge { tag: u8, len: u32, max: u32 },
    /// The length was possible but the body is not what its type requires.
    #[error("malformed message of type '{}'", printable(*tag))]
    Malformed { tag: u8 },
}

fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// What to do with a message whose header was just seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHeader {
    /// Forward it without looking at the body (the body may stream through in parts).
    Pass,
    /// Wait until the whole message is buffered and show it to [`ScanHandler::message`].
    Decode,
    /// Do not forward it; stop before it (it stays unscanned in the buffer).
    StopBefore,
}

/// What to do after a decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Forward it and keep scanning.
    Continue,
    /// Forward it and stop scanning after it.
    StopAfter,
    /// Do not forward it; stop before it (it stays unscanned in the buffer).
    StopBefore,
}

/// The caller's side of a scan: sees every header once, and whole messages on demand.
pub trait ScanHandler {
    type Error: From<FrameError>;
    fn header(&mut self, header: Header) -> Result<OnHeader, Self::Error>;
    fn message(&mut self, header: Header, body: &[u8]) -> Result<Visit, Self::Error> {
        let _ = (header, body);
        Ok(Visit::Continue)
    }
}

/// Walks message boundaries over a buffer that is filled from one socket and drained
/// into another.
///
/// The buffer is laid out as `[scanned: may be forwarded | not yet scanned]`. Messages
/// the handler passes are forwarded as they arrive, even when their body is not
/// complete yet (a 1 GiB DataRow never has to fit in memory). Messages the handler
/// wants decoded are shown once complete, and are capped at `max_decoded`.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Bytes at the front of the buffer that have been scanned and may be forwarded.
    scanned: usize,
    /// Bytes of a passed-through body that have not arrived yet.
    skip: usize,
    /// The header at `scanned` was already shown and is waiting for its body.
    awaiting_body: bool,
    /// Largest length field accepted at all.
    max_len: u32,
    /// Largest length field of a message that is decoded.
    max_decoded: u32,
}

impl Scanner {
    pub fn new(max_len: u32, max_decoded: u32) -> Self {
        Scanner {
            scanned: 0,
            skip: 0,
            awaiting_body: false,
            max_len,
            max_decoded: max_decoded.min(max_len),
        }
    }

    /// The largest length field this scanner accepts.
    #[inline]
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Bytes at the front of the buffer that may be forwarded.
    #[inline]
    pub fn forwardable(&self) -> usize {
        self.scanned
    }

    /// True when the scanner stands between messages (no body is half passed through).
    #[inline]
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && !self.awaiting_body
    }

    /// The caller removed `n` forwarded bytes from the front of the buffer.
    #[inline]
    pub fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.scanned);
        self.scanned -= n;
    }

    /// The caller handled the message the scan stopped before: `replaced` bytes now
    /// stand at the scan point and may be forwarded, and `remaining` more bytes of
    /// the same message (its body's tail, not rewritten) follow and pass through.
    #[inline]
    pub fn accept(&mut self, replaced: usize, remaining: usize) {
        self.scanned += replaced;
        self.skip = remaining;
        self.awaiting_body = false;
    }

    /// The unscanned part of the buffer starts at this offset.
    #[inline]
    pub fn scan_point(&self) -> usize {
        self.scanned
    }

    /// Forget everything (the buffer was cleared).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.skip = 0;
        self.awaiting_body = false;
    }

    /// Scans `buf` from where the last call stopped; returns the number of bytes at
    /// the front of `buf` that may be forwarded.
    #[inline]
    pub fn scan<H: ScanHandler>(&mut self, buf: &[u8], handler: &mut H) -> Result<usize, H::Error> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - self.scanned);
                self.scanned += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            // Every header is checked, also the one whose body is awaited: the check
            // is two compares, and it keeps `Header` valid by construction.
            let Some(header) = Header::parse(&buf[self.scanned..], self.max_len)? else {
                break;
            };
            let action = if self.awaiting_body {
                OnHeader::Decode
            } else {
                handler.header(header)?
            };
            match action {
                OnHeader::Pass => {
                    self.scanned += HEADER_LEN;
                    self.skip = header.body_len();
                }
                OnHeader::StopBefore => break,
                OnHeader::Decode => {
                    if header.len > self.max_decoded {
                        return Err(FrameError::TooLarge {
                            tag: header.tag,
                            len: header.len,
                            max: self.max_decoded,
                        }
                        .into());
                    }
                    let end = self.scanned + header.total_len();
                    if buf.len() < end {
                        self.awaiting_body = true;
                        break;
                    }
                    self.awaiting_body = false;
                    let body = &buf[self.scanned + HEADER_LEN..end];
                    match handler.message(header, body)? {
                        Visit::Continue => self.scanned = end,
                        Visit::StopAfter => {
                            self.scanned = end;
                            break;
                        }
                        Visit::StopBefore => break,
                    }
                }
            }
        }
        Ok(self.scanned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Decodes ReadyForQuery, stops before Terminate, counts headers.
    #[derive(Default)]
    struct Rfq {
        seen: Vec<u8>,
        headers: usize,
    }

    impl ScanHandler for Rfq {
        type Error = FrameError;
        fn header(&mut self, h: Header) -> Result<OnHeader, FrameError> {
            self.headers += 1;
            Ok(match h.tag {
                b'Z' => OnHeader::Decode,
                b'X' => OnHeader::StopBefore,
                _ => OnHeader::Pass,
            })
        }
        fn message(&mut self, h: Header, body: &[u8]) -> Result<Visit, FrameError> {
            assert_eq!(body.len(), h.body_len());
            self.seen.push(body[0]);
            Ok(Visit::Continue)
        }
    }

    #[test]
    fn passes_uninteresting_bodies_through_before_they_are_complete() {
        let mut stream = msg(b'D', &[7u8; 100]);
        stream.extend(msg(b'Z', b"I"));
        let mut s = Scanner::new(u32::MAX, 1024);
        let mut h = Rfq::default();
        // Only part of the DataRow arrived: header + 10 bytes are forwardable.
        assert_eq!(s.scan(&stream[..15], &mut h), Ok(15));
        // The rest arrives, including a partial ReadyForQuery: held back until complete.
        assert_eq!(s.scan(&stream[..stream.len() - 1], &mut h), Ok(105));
        assert!(h.seen.is_empty());
        assert!(!s.at_boundary());
        assert_eq!(s.scan(&stream, &mut h), Ok(stream.len()));
        assert_eq!(h.seen, vec![b'I']);
        // Each header was shown once, although the ReadyForQuery took two scans.
        assert_eq!(h.headers, 2);
        assert!(s.at_boundary());
    }

    #[test]
    fn consumed_bytes_shift_the_scan_position() {
        let stream = [msg(b'C', b"SELECT 1\0"), msg(b'Z', b"T")].concat();
        let mut s = Scanner::new(u32::MAX, 1024);
        let mut h = Rfq::default();
        assert_eq!(s.scan(&stream[..3], &mut h), Ok(0));
        assert_eq!(s.scan(&stream[..14], &mut h), Ok(14));
        s.consumed(14);
        assert_eq!(s.scan(&stream[14..], &mut h), Ok(6));
        assert_eq!(h.seen, vec![b'T']);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut h = Rfq::default();
        let mut s = Scanner::new(1000, 100);
        assert!(matches!(
            s.scan(&[b'Q', 0, 0, 0, 3], &mut h),
            Err(FrameError::InvalidLength { .. })
        ));
        let mut s = Scanner::new(1000, 100);
        assert!(matches!(
            s.scan(&[b'Q', 0, 0, 0x10, 0], &mut h),
            Err(FrameError::TooLarge { .. })
        ));
        let mut s = Scanner::new(1000, 100);
        assert!(matches!(
            s.scan(&[b'Z', 0, 0, 0x01, 0], &mut h),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn header_refuses_lengths_below_four_and_above_the_limit() {
        for tag in [b'Z', b'E', b'D', b'Q', b'p', 0, 0xff] {
            for len in 0u32..4 {
                let mut buf = vec![tag];
                buf.extend_from_slice(&len.to_be_bytes());
                assert_eq!(
                    Header::parse(&buf, u32::MAX),
                    Err(FrameError::InvalidLength { tag, len })
                );
                assert_eq!(
                    Header::whole(&buf, u32::MAX),
                    Err(FrameError::InvalidLength { tag, len })
                );
            }
        }
        let h = Header::parse(&msg(b'H', b""), 4).unwrap().unwrap();
        assert_eq!((h.length(), h.body_len(), h.total_len()), (4, 0, 5));
        assert_eq!(
            Header::parse(&msg(b'Q', b"SELECT\0"), 10),
            Err(FrameError::TooLarge {
                tag: b'Q',
                len: 11,
                max: 10
            })
        );
        // Fewer than 5 bytes: no header yet, whatever they say.
        assert_eq!(Header::parse(&[b'Z', 0, 0, 0], 100), Ok(None));
    }

    #[test]
    fn whole_waits_for_the_complete_message() {
        let m = msg(b'C', b"SELECT 1\0");
        for cut in 0..m.len() {
            assert_eq!(Header::whole(&m[..cut], 1000), Ok(None), "cut at {cut}");
        }
        assert_eq!(Header::whole(&m, 1000).unwrap().map(|h| h.total_len()), Some(m.len()));
    }

    #[test]
    fn scanner_refuses_a_short_length_after_a_passed_body() {
        // A valid DataRow, then a header whose length field is 2: refused, never sliced.
        let mut stream = msg(b'D', &[1u8; 20]);
        stream.extend_from_slice(&[b'Z', 0, 0, 0, 2, b'I']);
        let mut s = Scanner::new(u32::MAX, 1024);
        assert_eq!(
            s.scan(&stream, &mut Rfq::default()),
            Err(FrameError::InvalidLength { tag: b'Z', len: 2 })
        );
    }

    #[test]
    fn stop_before_leaves_the_message_unscanned() {
        let stream = [msg(b'P', b"x"), msg(b'X', b"")].concat();
        let mut s = Scanner::new(u32::MAX, 1024);
        let n = s.scan(&stream, &mut Rfq::default()).unwrap();
        assert_eq!(n, 6);
        assert_eq!(stream[n], b'X');
    }
}
