//! The server name (SNI) of a TLS ClientHello, read from bytes peeked off the socket, for TLS
//! passthrough: the proxy routes on the name without terminating TLS or consuming a byte.
//!
//! Written by hand over the wire format (RFC 8446 §4.1.2, RFC 6066 §3) because it reads bytes
//! from anyone: every length is checked against what is there, nothing is indexed unchecked, and
//! a proptest feeds it arbitrary and truncated input.

/// Most ClientHello bytes buffered (TLS records included) before giving up on a connection.
/// A handshake message may span records, but real ClientHellos, even with post-quantum key
/// shares (~1.2 KiB for X25519MLKEM768), fit in one 16 KiB record; this allows one full record
/// plus a second record's header, and bounds what a client can make the proxy hold.
pub const MAX_HELLO: usize = 16 * 1024 + 5 + 5;

/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Extension `server_name`.
const SERVER_NAME: u16 = 0;
/// `NameType` `host_name`, the only one defined.
const HOST_NAME: u8 = 0;
/// A TLS plaintext record's payload is at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed to see the whole ClientHello.
    Incomplete,
    /// Not a TLS ClientHello.
    Invalid,
    /// A ClientHello, with its server name when it sent one.
    Parsed(Option<String>),
}

/// Reads the ClientHello at the start of `bytes`: the handshake message is gathered from as
/// many records as it spans, then parsed.
pub fn client_hello(bytes: &[u8]) -> Hello {
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(header) = rest.get(..5) else { return Hello::Incomplete };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != HANDSHAKE || header[1] != 3 || length == 0 || length > MAX_RECORD {
            return Hello::Invalid;
        }
        let Some(payload) = rest.get(5..5 + length) else { return Hello::Incomplete };
        message.extend_from_slice(payload);
        rest = &rest[5 + length..];
        // The handshake header says how long the message is; gather records until it is whole.
        if let Some(&[kind, a, b, c]) = message.get(..4) {
            if kind != CLIENT_HELLO {
                return Hello::Invalid;
            }
            let needed = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if needed > MAX_HELLO {
                return Hello::Invalid;
            }
            if message.len() >= needed {
                return match parse_client_hello(&message[4..needed]) {
                    Some(name) => Hello::Parsed(name),
                    None => Hello::Invalid,
                };
            }
        }
    }
}

/// A cursor over bytes where every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a length prefix of `width` bytes (1 or 2).
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let length = if width == 1 { usize::from(self.u8()?) } else { usize::from(self.u16()?) };
        Some(Reader(self.take(length)?))
    }
}

/// `Some(None)`: a valid ClientHello without SNI; `None`: malformed.
fn parse_client_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        // No extensions at all (only possible before TLS 1.3): no SNI.
        return Some(None);
    }
    let mut extensions = r.vec(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec(2)?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut names = data.vec(2)?;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec(2)?.0;
            if name_type == HOST_NAME {
                return Some(Some(host_name(name)?));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A DNS host name as SNI carries it (RFC 6066: ASCII, no trailing dot), lower-cased. Anything
/// else (empty, too long, bytes a hostname cannot hold) is a malformed hello.
fn host_name(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || bytes.len() > 253 {
        return None;
    }
    if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return None;
    }
    let name = std::str::from_utf8(bytes).ok()?.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal well-formed ClientHello record carrying `sni` (when given) among other
    /// extensions, as `split` records.
    pub fn hello(sni: Option<&str>, split: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        // A supported_versions extension before SNI, as real clients send.
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            extensions.extend_from_slice(&[0x00, 0x00]);
            extensions.extend_from_slice(&(n + 5).to_be_bytes());
            extensions.extend_from_slice(&(n + 3).to_be_bytes());
            extensions.push(0);
            extensions.extend_from_slice(&n.to_be_bytes());
            extensions.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let chunk = message.len().div_ceil(split.max(1));
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            client_hello(&hello(Some("App.Example.com"), 1)),
            Hello::Parsed(Some("app.example.com".into()))
        );
        assert_eq!(client_hello(&hello(None, 1)), Hello::Parsed(None));
    }

    #[test]
    fn gathers_a_hello_spread_over_records() {
        assert_eq!(
            client_hello(&hello(Some("a.example.com"), 3)),
            Hello::Parsed(Some("a.example.com".into()))
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_trailing_bytes_are_ignored() {
        let full = hello(Some("a.example.com"), 2);
        for n in 0..full.len() {
            assert_eq!(client_hello(&full[..n]), Hello::Incomplete, "prefix of {n}");
        }
        let mut more = full.clone();
        more.extend_from_slice(b"application data");
        assert_eq!(client_hello(&more), Hello::Parsed(Some("a.example.com".into())));
    }

    #[test]
    fn other_protocols_and_broken_hellos_are_invalid() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Hello::Invalid);
        assert_eq!(client_hello(&[HANDSHAKE, 3, 1, 0, 0]), Hello::Invalid, "empty record");
        let mut bad_name = hello(Some("a b"), 1);
        assert_eq!(client_hello(&bad_name), Hello::Invalid);
        // A ServerHello (type 2) is not a ClientHello.
        bad_name[5] = 2;
        assert_eq!(client_hello(&bad_name), Hello::Invalid);
        // A length that runs past its vector.
        let mut overrun = hello(Some("a.example.com"), 1);
        let at = overrun.len() - "a.example.com".len() - 2;
        overrun[at] = 0xff;
        assert_eq!(client_hello(&overrun), Hello::Invalid);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = client_hello(&bytes);
        }

        #[test]
        fn never_panics_on_corrupted_hellos(
            name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,10}){0,3}",
            split in 1usize..4,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = hello(Some(&name), split);
            prop_assert_eq!(client_hello(&bytes), Hello::Parsed(Some(name.clone())));
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = client_hello(&bytes);
        }
    }
}
