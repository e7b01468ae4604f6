//! Property tests on stable Rust (proptest): whatever bytes arrive, in whatever
//! chunks, the wire crate never panics and never hands out a frame shorter than its
//! header. The default is proptest's 256 cases per property; set PROPTEST_CASES for a
//! longer run (scripts/fuzz.sh).

use proptest::prelude::*;
use sluice_wire::backend::{self, TxStatus};
use sluice_wire::frame::MIN_LEN;
use sluice_wire::scram::{ScramSecret, ScramServer};
use sluice_wire::{startup, FrameError, Header, OnHeader, ScanHandler, Scanner, Visit};

/// Decodes ReadyForQuery and ParameterStatus, stops before 'X', passes the rest:
/// what the session's scanners do.
#[derive(Default)]
struct Collect {
    decoded: Vec<(u8, Vec<u8>)>,
    headers: Vec<Header>,
}

impl ScanHandler for Collect {
    type Error = FrameError;
    fn header(&mut self, h: Header) -> Result<OnHeader, FrameError> {
        assert!(h.length() >= MIN_LEN, "a header with length {}", h.length());
        self.headers.push(h);
        Ok(match h.tag {
            b'Z' | b'S' => OnHeader::Decode,
            b'X' => OnHeader::StopBefore,
            _ => OnHeader::Pass,
        })
    }
    fn message(&mut self, h: Header, body: &[u8]) -> Result<Visit, FrameError> {
        assert_eq!(body.len(), h.body_len());
        // The parsers never panic on what they are shown.
        let _ = backend::parse_ready_for_query(body);
        let _ = backend::parse_parameter_status(body);
        self.decoded.push((h.tag, body.to_vec()));
        Ok(Visit::Continue)
    }
}

/// Feeds `stream` to a scanner in the given chunk sizes, forwarding (dropping) what
/// it may forward as a proxy does. Returns the handler and whether it failed.
fn feed(stream: &[u8], chunks: &[usize], max_len: u32) -> (Collect, Result<usize, FrameError>) {
    let mut scanner = Scanner::new(max_len, 1024);
    let mut handler = Collect::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut forwarded = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while at < stream.len() {
        let n = sizes.next().unwrap_or(1).max(1).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        match scanner.scan(&buf, &mut handler) {
            Ok(ready) => {
                assert!(ready <= buf.len());
                buf.drain(..ready);
                scanner.consumed(ready);
                forwarded += ready;
            }
            Err(e) => return (handler, Err(e)),
        }
    }
    (handler, Ok(forwarded))
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A stream of well-formed backend messages (no Terminate).
fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let one = prop_oneof![
        (proptest::sample::select(vec![b'I', b'T', b'E'])).prop_map(|s| (b'Z', vec![s])),
        ("[a-z_]{1,12}", "[ -~]{0,20}").prop_map(|(k, v)| (b'S', [k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat())),
        (
            proptest::sample::select(vec![b'D', b'C', b'T', b'E', b'N', b'1', b'2']),
            proptest::collection::vec(any::<u8>(), 0..300)
        ),
    ];
    proptest::collection::vec(one, 0..40)
}

proptest! {
    #[test]
    fn header_parse_never_makes_an_impossible_header(bytes in proptest::collection::vec(any::<u8>(), 0..16), max in 0u32..100_000) {
        match Header::parse(&bytes, max) {
            Ok(Some(h)) => {
                prop_assert!(h.length() >= MIN_LEN && h.length() <= max);
                prop_assert_eq!(h.total_len(), h.length() as usize + 1);
                prop_assert_eq!(h.body_len() + 4, h.length() as usize);
            }
            Ok(None) => prop_assert!(bytes.len() < 5),
            Err(FrameError::InvalidLength { len, .. }) => prop_assert!(len < MIN_LEN),
            Err(FrameError::TooLarge { len, max: m, .. }) => prop_assert!(len > m),
            Err(FrameError::Malformed { .. }) => prop_assert!(false, "parse never says Malformed"),
        }
    }

    #[test]
    fn the_scanner_survives_any_bytes_in_any_chunks(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        // No panic; either an error or everything up to a stop is accounted for.
        let (_, result) = feed(&bytes, &chunks, 1 << 20);
        if let Ok(forwarded) = result {
            prop_assert!(forwarded <= bytes.len());
        }
    }

    #[test]
    fn well_formed_streams_scan_the_same_in_any_chunks(
        msgs in messages(),
        chunks in proptest::collection::vec(1usize..97, 1..6),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| message(*t, b)).collect();
        let (handler, result) = feed(&stream, &chunks, 1 << 20);
        // Every byte is forwarded, and what was decoded is exactly the Z and S messages.
        prop_assert_eq!(result, Ok(stream.len()));
        let expected: Vec<(u8, Vec<u8>)> = msgs.iter().filter(|(t, _)| matches!(t, b'Z' | b'S')).cloned().collect();
        prop_assert_eq!(&handler.decoded, &expected);
        // Each header was shown once.
        prop_assert_eq!(handler.headers.len(), msgs.len());
        for (tag, body) in &handler.decoded {
            if *tag == b'Z' {
                prop_assert!(backend::parse_ready_for_query(body).is_some());
            }
        }
    }

    #[test]
    fn a_short_length_anywhere_in_a_stream_is_refused(
        msgs in messages(),
        at in any::<prop::sample::Index>(),
        len in 0u32..4,
        chunks in proptest::collection::vec(1usize..33, 1..4),
    ) {
        let mut parts: Vec<Vec<u8>> = msgs.iter().map(|(t, b)| message(*t, b)).collect();
        let i = at.index(parts.len() + 1);
        let mut bad = vec![b'D'];
        bad.extend_from_slice(&len.to_be_bytes());
        parts.insert(i, bad);
        let stream: Vec<u8> = parts.concat();
        let (_, result) = feed(&stream, &chunks, 1 << 20);
        prop_assert_eq!(result, Err(FrameError::InvalidLength { tag: b'D', len }));
    }

    #[test]
    fn startup_parsing_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..512), len in any::<u32>()) {
        let _ = startup::check_length(len);
        let _ = startup::parse(&payload);
    }

    #[test]
    fn backend_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = backend::parse_error_fields(&body);
        let _ = backend::parse_parameter_status(&body);
        if let Some(s) = backend::parse_ready_for_query(&body) {
            prop_assert!(matches!(s, TxStatus::Idle | TxStatus::InTransaction | TxStatus::Failed));
        }
    }

    #[test]
    fn scram_server_never_panics_on_client_messages(
        first in proptest::collection::vec(any::<u8>(), 0..200),
        last in proptest::collection::vec(any::<u8>(), 0..200),
        printable_first in "n,,n=[a-z]{0,8},r=[ -~]{0,40}",
    ) {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 16);
        for client_first in [first.as_slice(), printable_first.as_bytes()] {
            if let Ok((server, _)) = ScramServer::start(secret.clone(), client_first) {
                let _ = server.finish(&last);
            }
        }
    }
}
