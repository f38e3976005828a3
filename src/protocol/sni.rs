//! Peeking at a TLS ClientHello for the server name (SNI) to route a connection on, without
//! terminating TLS.
//!
//! This module owns the reading of the first flight: reassembling the ClientHello handshake
//! message from however many TLS records (and TCP segments) it arrives in, checking every length
//! in it, and returning the normalised host name. It never decrypts, answers or changes anything:
//! the bytes are relayed as they came. How long to wait for them and what to route on the name
//! belong to the session and routing code.

use std::borrow::Cow;
use std::fmt;

/// The most stream bytes (record headers included) the relay buffers to find the server name.
/// Real ClientHellos are well under this, post-quantum key shares included.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const RECORD_HEADER_LEN: usize = 5;
/// A TLSPlaintext fragment may not exceed 2^14 bytes (RFC 8446, section 5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;
const EXTENSION_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_HOST_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// What has arrived is a valid beginning of a ClientHello; read more.
    Incomplete,
    /// The stream does not start with a TLS handshake record.
    NotTls,
    /// The whole ClientHello has arrived. `server_name` is the host_name from the server_name
    /// extension, lowercased and without a trailing dot; None when the client sent none.
    ClientHello { server_name: Option<String> },
}

/// Why a stream that starts like TLS was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A record or ClientHello field is inconsistent (carried: which one, for logs).
    Malformed(&'static str),
    /// Finding the end of the ClientHello would take more than [`MAX_CLIENT_HELLO`] bytes.
    TooLong,
    /// The host_name is empty, too long, not printable ASCII, or has an empty label.
    BadServerName,
}

impl Error {
    /// A short, fixed, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed",
            Error::TooLong => "too_long",
            Error::BadServerName => "bad_server_name",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed TLS ClientHello: {what}"),
            Error::TooLong => write!(f, "TLS ClientHello longer than {MAX_CLIENT_HELLO} bytes"),
            Error::BadServerName => f.write_str("invalid server name in TLS ClientHello"),
        }
    }
}

impl std::error::Error for Error {}

/// Looks for a ClientHello at the start of `buf`, the bytes received so far from the start of the
/// stream (after any PROXY header). Bytes after the ClientHello are not looked at.
///
/// `Incomplete` is returned only while more bytes could still complete a valid ClientHello
/// within [`MAX_CLIENT_HELLO`] bytes; anything already wrong is an error at once.
pub fn parse_client_hello(buf: &[u8]) -> Result<Peeked, Error> {
    match buf.first() {
        None => return Ok(Peeked::Incomplete),
        Some(&CONTENT_TYPE_HANDSHAKE) => {}
        Some(_) => return Ok(Peeked::NotTls),
    }
    let message = gather_client_hello(buf)?;
    match read_client_hello(&message) {
        Ok(server_name) => Ok(Peeked::ClientHello { server_name }),
        Err(Stop::Incomplete) => Ok(Peeked::Incomplete),
        Err(Stop::Invalid(error)) => Err(error),
    }
}

/// Concatenates the payloads of consecutive handshake records until they hold the whole
/// ClientHello message, or until `buf` runs out. Returns the message bytes gathered (never more
/// than the message), borrowed from `buf` when the first record holds them all.
fn gather_client_hello(buf: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut record_start = 0;
    loop {
        let Some(payload_len) = read_record_header(buf.get(record_start..).unwrap_or_default())?
        else {
            return Ok(message);
        };
        let payload_start = record_start + RECORD_HEADER_LEN;
        let payload_end = payload_start + payload_len;
        let arrived = buf
            .get(payload_start..buf.len().min(payload_end))
            .unwrap_or_default();
        append(&mut message, arrived, buf.len());

        if let Some(message_len) = declared_message_len(&message)? {
            let missing = message_len.saturating_sub(message.len());
            let surplus = message.len().saturating_sub(message_len);
            let arrived_end = payload_start + arrived.len();
            let room_left_in_record = payload_end - arrived_end;
            // Where in the stream the message ends, or the earliest it can.
            let message_end = if missing == 0 {
                arrived_end - surplus
            } else if missing <= room_left_in_record {
                arrived_end + missing
            } else {
                payload_end + RECORD_HEADER_LEN + (missing - room_left_in_record)
            };
            if message_end > MAX_CLIENT_HELLO {
                return Err(Error::TooLong);
            }
            if missing == 0 {
                truncate(&mut message, message_len);
                return Ok(message);
            }
        }
        if arrived.len() < payload_len {
            return Ok(message);
        }
        record_start = payload_end;
    }
}

/// Checks the bytes present of a record header; returns its payload length once all five are in.
fn read_record_header(header: &[u8]) -> Result<Option<usize>, Error> {
    // Handshake messages may not be interleaved with other record types (RFC 8446, 5.1).
    if header
        .first()
        .is_some_and(|&kind| kind != CONTENT_TYPE_HANDSHAKE)
    {
        return Err(Error::Malformed("record type inside the ClientHello"));
    }
    // Clients put 3.0 to 3.3 in the record version of their first flight, 3.1 most often.
    if header.get(1).is_some_and(|&major| major != 3)
        || header.get(2).is_some_and(|&minor| minor > 3)
    {
        return Err(Error::Malformed("record version"));
    }
    let Some(&[high, low]) = header.get(3..RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let payload_len = usize::from(u16::from_be_bytes([high, low]));
    // Zero-length handshake fragments are forbidden, and they would let a peer keep us walking
    // record headers that carry nothing.
    if payload_len == 0 || payload_len > MAX_RECORD_PAYLOAD {
        return Err(Error::Malformed("record length"));
    }
    Ok(Some(payload_len))
}

/// The length of the whole handshake message (header included), once its header is in.
fn declared_message_len(message: &[u8]) -> Result<Option<usize>, Error> {
    if message
        .first()
        .is_some_and(|&kind| kind != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(Error::Malformed(
            "first handshake message is not a ClientHello",
        ));
    }
    Ok(match message.get(1..HANDSHAKE_HEADER_LEN) {
        Some(&[a, b, c]) => Some(HANDSHAKE_HEADER_LEN + u24(a, b, c)),
        _ => None,
    })
}

/// Appends a record's payload. Only a message split over several records is copied, and then
/// into one allocation no larger than the input.
fn append<'a>(message: &mut Cow<'a, [u8]>, fragment: &'a [u8], input_len: usize) {
    match message {
        Cow::Borrowed([]) => *message = Cow::Borrowed(fragment),
        Cow::Borrowed(gathered) => {
            let mut owned = Vec::with_capacity(input_len);
            owned.extend_from_slice(gathered);
            owned.extend_from_slice(fragment);
            *message = Cow::Owned(owned);
        }
        Cow::Owned(owned) => owned.extend_from_slice(fragment),
    }
}

fn truncate(message: &mut Cow<'_, [u8]>, len: usize) {
    match message {
        Cow::Borrowed(gathered) => *gathered = gathered.get(..len).unwrap_or(gathered),
        Cow::Owned(owned) => owned.truncate(len),
    }
}

fn u24(a: u8, b: u8, c: u8) -> usize {
    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
}

/// Why reading stopped short of a result.
enum Stop {
    /// The structure is consistent so far, but its end has not arrived.
    Incomplete,
    Invalid(Error),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Stop {
        Stop::Invalid(error)
    }
}

fn malformed(what: &'static str) -> Stop {
    Stop::Invalid(Error::Malformed(what))
}

/// Reads a structure whose length was declared by its enclosing one, of which only a prefix may
/// have arrived: reading past the declared end is malformed, past what has arrived incomplete.
/// That distinction lets a bad length be rejected before the rest of the message arrives.
struct Reader<'a> {
    arrived: &'a [u8],
    declared_len: usize,
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(arrived: &'a [u8], declared_len: usize) -> Reader<'a> {
        Reader {
            arrived,
            declared_len,
            position: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.declared_len.saturating_sub(self.position)
    }

    fn is_at_end(&self) -> bool {
        self.remaining() == 0
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], Stop> {
        if len > self.remaining() {
            return Err(malformed(what));
        }
        let end = self.position + len;
        let bytes = self
            .arrived
            .get(self.position..end)
            .ok_or(Stop::Incomplete)?;
        self.position = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Stop> {
        self.bytes(N, what)?.try_into().map_err(|_| malformed(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Stop> {
        let [byte] = self.array(what)?;
        Ok(byte)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Stop> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A reader over the next `len` bytes, whether they have arrived or not.
    fn nested(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, Stop> {
        if len > self.remaining() {
            return Err(malformed(what));
        }
        let start = self.position;
        let end = start + len;
        let arrived = self
            .arrived
            .get(start..end.min(self.arrived.len()))
            .unwrap_or_default();
        self.position = end;
        Ok(Reader::new(arrived, len))
    }
}

/// Walks the ClientHello (RFC 8446, section 4.1.2) to the end of its declared length, so that a
/// result is only given for a whole, consistent message.
fn read_client_hello(message: &[u8]) -> Result<Option<String>, Stop> {
    let mut header = Reader::new(message, HANDSHAKE_HEADER_LEN);
    if header.u8("handshake type")? != HANDSHAKE_CLIENT_HELLO {
        return Err(malformed("first handshake message is not a ClientHello"));
    }
    let [a, b, c] = header.array("handshake length")?;
    let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
    let mut hello = Reader::new(body, u24(a, b, c));

    let [major, minor] = hello.array("legacy_version")?;
    if major != 3 || minor > 3 {
        return Err(malformed("legacy_version"));
    }
    hello.bytes(RANDOM_LEN, "random")?;
    let session_id_len = usize::from(hello.u8("session_id length")?);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Err(malformed("session_id length"));
    }
    hello.bytes(session_id_len, "session_id")?;
    let cipher_suites_len = usize::from(hello.u16("cipher_suites length")?);
    if cipher_suites_len == 0 || cipher_suites_len % 2 != 0 {
        return Err(malformed("cipher_suites length"));
    }
    hello.bytes(cipher_suites_len, "cipher_suites")?;
    let compression_methods_len = usize::from(hello.u8("compression_methods length")?);
    if compression_methods_len == 0 {
        return Err(malformed("compression_methods length"));
    }
    hello.bytes(compression_methods_len, "compression_methods")?;

    // Pre-TLS 1.2 clients may end the message here.
    if hello.is_at_end() {
        return Ok(None);
    }
    let extensions_len = usize::from(hello.u16("extensions length")?);
    if extensions_len != hello.remaining() {
        return Err(malformed("extensions length"));
    }
    let mut extensions = hello.nested(extensions_len, "extensions length")?;
    let mut server_name = None;
    let mut seen_server_name = false;
    while !extensions.is_at_end() {
        let kind = extensions.u16("extension type")?;
        let len = usize::from(extensions.u16("extension length")?);
        if kind != EXTENSION_SERVER_NAME {
            extensions.bytes(len, "extension length")?;
            continue;
        }
        // Two would leave it to the backend's TLS stack which one counts, and it may not pick
        // the one we routed on.
        if seen_server_name {
            return Err(malformed("duplicate server_name extension"));
        }
        seen_server_name = true;
        server_name = read_server_name(extensions.nested(len, "extension length")?)?;
    }
    Ok(server_name)
}

/// The server_name extension body (RFC 6066, section 3): a list of (type, name) entries.
fn read_server_name(mut extension: Reader<'_>) -> Result<Option<String>, Stop> {
    let list_len = usize::from(extension.u16("server_name list length")?);
    if list_len == 0 || list_len != extension.remaining() {
        return Err(malformed("server_name list length"));
    }
    let mut list = extension.nested(list_len, "server_name list length")?;
    let mut host_name = None;
    while !list.is_at_end() {
        let name_type = list.u8("server_name type")?;
        let name_len = usize::from(list.u16("server_name length")?);
        let name = list.bytes(name_len, "server_name length")?;
        // Other name types (none defined so far) are skipped.
        if name_type == NAME_TYPE_HOST_NAME {
            if host_name.is_some() {
                return Err(malformed("more than one host_name"));
            }
            host_name = Some(normalize_host_name(name).ok_or(Error::BadServerName)?);
        }
    }
    Ok(host_name)
}

/// Routes compare names as lowercase without the root dot. Anything that cannot be a DNS name
/// (controls, spaces, non-ASCII, empty labels) is refused rather than passed on to logs and
/// route matching.
fn normalize_host_name(name: &[u8]) -> Option<String> {
    if name.is_empty() || name.len() > MAX_HOST_NAME_LEN || !name.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return None;
    }
    String::from_utf8(name.to_ascii_lowercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl s_client -connect 127.0.0.1:PORT -servername example.com` (OpenSSL 3.0.19),
    /// captured by a listener that wrote out what it received.
    const OPENSSL_CLIENT_HELLO: &[&str] = &[
        "160301013801000134030372db033492d001de328d8d56cad970111fe40d82041fdcb4186ffbaf4ef57171205583ddd2",
        "7a5263d08fd630a1bc6d4e1607aeebf6eab8dbb9f46163cf5c84fd33003e130213031301c02cc030009fcca9cca8ccaa",
        "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000ad",
        "00000010000e00000b6578616d706c652e636f6d000b000403000102000a00160014001d0017001e0019001801000101",
        "010201030104002300000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
        "05010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d0020bfa970",
        "c69b084ec81894c3e3b6d828dea603ed2d5979c07cab0e53f21971cc42",
    ];

    /// `curl https://MyResource.OpenAI.Azure.com:PORT/ --resolve ...` (curl lowercases the name
    /// itself; 517 bytes thanks to the padding extension), captured the same way.
    const CURL_CLIENT_HELLO: &[&str] = &[
        "1603010200010001fc03036ee9b6a0053a6d8d226ac8c3b5289d57ed54594a173bd33b4df5a16a388f278c2092e520aa",
        "3b30f36ecd633339080766a0ad82200c2741fa113c0c3d80c3d22a8e003e130213031301c02cc030009fcca9cca8ccaa",
        "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000175",
        "00000020001e00001b6d797265736f757263652e6f70656e61692e617a7572652e636f6d000b000403000102000a0016",
        "0014001d0017001e00190018010001010102010301040010000e000c02683208687474702f312e310016000000170000",
        "00310000000d002a0028040305030603080708080809080a080b08040805080604010501060103030301030204020502",
        "0602002b0009080304030303020301002d00020101003300260024001d0020e4b4899afbda3fdbb9f6fb1d6b9815506a",
        "3c13f2ccd6acf5e2a70063bb06db1c001500a20000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000",
    ];

    fn from_hex(lines: &[&str]) -> Vec<u8> {
        let hex: String = lines.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn u16_bytes(len: usize) -> [u8; 2] {
        u16::try_from(len).unwrap().to_be_bytes()
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        [&kind.to_be_bytes()[..], &u16_bytes(data.len()), data].concat()
    }

    /// A server_name extension holding these (name type, name) entries.
    fn server_name_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (name_type, name) in names {
            list.push(*name_type);
            list.extend_from_slice(&u16_bytes(name.len()));
            list.extend_from_slice(name);
        }
        extension(0x0000, &[&u16_bytes(list.len())[..], &list].concat())
    }

    fn sni(name: &str) -> Vec<u8> {
        server_name_extension(&[(0, name.as_bytes())])
    }

    /// Typical TLS 1.3 extensions around the server_name one.
    fn common_extensions(server_name: &[u8]) -> Vec<u8> {
        [
            &extension(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])[..], // supported_groups
            server_name,
            &extension(0x0010, b"\x00\x03\x02h2"), // ALPN
            &extension(0x002b, &[0x04, 0x03, 0x04, 0x03, 0x03]), // supported_versions
            &extension(
                0x0033,
                &[&[0x00, 0x24, 0x00, 0x1d, 0x00, 0x20][..], &[0x11; 32]].concat(),
            ),
        ]
        .concat()
    }

    /// A ClientHello handshake message (header included). `extensions` None leaves the
    /// extensions block out altogether, as pre-TLS 1.2 clients may.
    fn client_hello_message(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xAB; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0xCD; 32]); // session_id
        body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        if let Some(extensions) = extensions {
            body.extend_from_slice(&u16_bytes(extensions.len()));
            body.extend_from_slice(extensions);
        }
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        [&[0x01, len[1], len[2], len[3]][..], &body].concat()
    }

    /// Wraps `message` in handshake records of the given payload sizes (the last takes the rest).
    fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        for (index, &size) in sizes.iter().enumerate() {
            let size = if index + 1 == sizes.len() {
                rest.len()
            } else {
                size
            };
            let (fragment, tail) = rest.split_at(size);
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16_bytes(fragment.len()));
            out.extend_from_slice(fragment);
            rest = tail;
        }
        out
    }

    fn one_record(message: &[u8]) -> Vec<u8> {
        records(message, &[message.len()])
    }

    fn hello_with_name(name: &str) -> Vec<u8> {
        one_record(&client_hello_message(Some(&common_extensions(&sni(name)))))
    }

    fn server_name_of(buf: &[u8]) -> Option<String> {
        match parse_client_hello(buf) {
            Ok(Peeked::ClientHello { server_name }) => server_name,
            other => panic!("expected a ClientHello, got {other:?}"),
        }
    }

    fn malformed_reason(buf: &[u8]) -> &'static str {
        match parse_client_hello(buf) {
            Err(Error::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// Every valid stream in these tests, by name; also the seed corpus for the fuzz target.
    fn valid_vectors() -> Vec<(&'static str, Vec<u8>)> {
        let message = client_hello_message(Some(&common_extensions(&sni("example.com"))));
        vec![
            ("openssl_example_com", from_hex(OPENSSL_CLIENT_HELLO)),
            ("curl_padded", from_hex(CURL_CLIENT_HELLO)),
            ("built_one_record", one_record(&message)),
            ("built_two_records", records(&message, &[40, 0])),
            ("built_three_records", records(&message, &[2, 70, 0])),
            (
                "built_no_sni",
                one_record(&client_hello_message(Some(&common_extensions(&[])))),
            ),
            (
                "built_no_extensions",
                one_record(&client_hello_message(None)),
            ),
        ]
    }

    #[test]
    fn captured_openssl_client_hello() {
        let buf = from_hex(OPENSSL_CLIENT_HELLO);
        assert_eq!(buf.len(), 317);
        assert_eq!(server_name_of(&buf).as_deref(), Some("example.com"));
    }

    #[test]
    fn captured_curl_client_hello() {
        let buf = from_hex(CURL_CLIENT_HELLO);
        assert_eq!(
            server_name_of(&buf).as_deref(),
            Some("myresource.openai.azure.com")
        );
    }

    #[test]
    fn built_client_hello_in_one_record() {
        assert_eq!(
            server_name_of(&hello_with_name("example.com")).as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn server_name_as_the_only_and_as_the_last_extension() {
        let message = client_hello_message(Some(&sni("only.example")));
        assert_eq!(
            server_name_of(&one_record(&message)).as_deref(),
            Some("only.example")
        );
        let last = [&common_extensions(&[])[..], &sni("last.example")].concat();
        let message = client_hello_message(Some(&last));
        assert_eq!(
            server_name_of(&one_record(&message)).as_deref(),
            Some("last.example")
        );
    }

    #[test]
    fn client_hello_split_across_records() {
        let message = client_hello_message(Some(&common_extensions(&sni("split.example"))));
        let splits: &[&[usize]] = &[
            &[40, 0],
            &[1, 0], // inside the handshake header
            &[4, 0], // right after it
            &[2, 70, 0],
            &[3, 1, 0],
            &[60, 60, 0], // the name itself straddles two records
        ];
        for sizes in splits {
            let buf = records(&message, sizes);
            assert_eq!(
                server_name_of(&buf).as_deref(),
                Some("split.example"),
                "{sizes:?}"
            );
        }
        // The smallest legal fragments: one byte each.
        let buf = records(&message, &vec![1; message.len()]);
        assert_eq!(server_name_of(&buf).as_deref(), Some("split.example"));
        // The captured hello, re-fragmented.
        let captured = from_hex(OPENSSL_CLIENT_HELLO);
        let buf = records(&captured[5..], &[100, 100, 0]);
        assert_eq!(server_name_of(&buf).as_deref(), Some("example.com"));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let message = client_hello_message(Some(&common_extensions(&sni("example.com"))));
        let mut streams = valid_vectors();
        streams.push((
            "one_byte_records",
            records(&message, &vec![1; message.len()]),
        ));
        for (name, buf) in streams {
            for end in 0..buf.len() {
                assert_eq!(
                    parse_client_hello(&buf[..end]),
                    Ok(Peeked::Incomplete),
                    "{name}, first {end} bytes"
                );
            }
            assert!(
                matches!(parse_client_hello(&buf), Ok(Peeked::ClientHello { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn bytes_after_the_client_hello_are_not_looked_at() {
        let hello = hello_with_name("example.com");
        for trailer in [
            &b"\x17\x03\x03\x00\x10early data"[..],
            b"\xff\xff\xff",
            b"\x16\x03\x01\x00\x00",
        ] {
            let buf = [&hello[..], trailer].concat();
            assert_eq!(server_name_of(&buf).as_deref(), Some("example.com"));
        }
        // Nor are bytes after the message inside its last record.
        let message = client_hello_message(Some(&sni("example.com")));
        let mut buf = one_record(&[&message[..], b"\x00\x00garbage"].concat());
        assert_eq!(server_name_of(&buf).as_deref(), Some("example.com"));
        buf.truncate(5 + message.len());
        assert_eq!(
            parse_client_hello(&buf),
            Ok(Peeked::ClientHello {
                server_name: Some("example.com".into())
            })
        );
    }

    #[test]
    fn no_server_name() {
        let without_sni = one_record(&client_hello_message(Some(&common_extensions(&[]))));
        assert_eq!(server_name_of(&without_sni), None);
        let without_extensions = one_record(&client_hello_message(None));
        assert_eq!(server_name_of(&without_extensions), None);
        let empty_extensions = one_record(&client_hello_message(Some(&[])));
        assert_eq!(server_name_of(&empty_extensions), None);
        // Only a name type other than host_name.
        let other_type = server_name_extension(&[(1, b"not-a-host-name")]);
        let buf = one_record(&client_hello_message(Some(&other_type)));
        assert_eq!(server_name_of(&buf), None);
        let both = server_name_extension(&[(1, b"x"), (0, b"host.example")]);
        let buf = one_record(&client_hello_message(Some(&both)));
        assert_eq!(server_name_of(&buf).as_deref(), Some("host.example"));
    }

    #[test]
    fn not_tls() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Peeked::NotTls)
        );
        assert_eq!(parse_client_hello(b"G"), Ok(Peeked::NotTls));
        assert_eq!(
            parse_client_hello(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Ok(Peeked::NotTls)
        );
        // An SSLv2-style hello (no longer sent by anything) is not a TLS record either.
        assert_eq!(
            parse_client_hello(b"\x80\x2e\x01\x03\x01"),
            Ok(Peeked::NotTls)
        );
        assert_eq!(parse_client_hello(b""), Ok(Peeked::Incomplete));
        assert_eq!(parse_client_hello(b"\x16"), Ok(Peeked::Incomplete));
    }

    #[test]
    fn server_name_is_normalised() {
        assert_eq!(
            server_name_of(&hello_with_name("MyResource.OpenAI.Azure.COM.")).as_deref(),
            Some("myresource.openai.azure.com")
        );
        assert_eq!(
            server_name_of(&hello_with_name("a_b-c.example")).as_deref(),
            Some("a_b-c.example")
        );
        let longest = [&["a".repeat(63)][..]; 4].concat().join(".") + "."; // 255 bytes with the dot
        assert_eq!(longest.len(), 256);
        let longest = &longest[1..];
        assert_eq!(longest.len(), 255);
        assert_eq!(
            server_name_of(&hello_with_name(longest)).map(|name| name.len()),
            Some(254)
        );
    }

    #[test]
    fn bad_server_names() {
        let too_long = "a".repeat(256);
        let non_ascii = "caf\u{e9}.example";
        for name in [
            "",
            ".",
            "..",
            "a..b",
            ".example",
            "example..",
            "a b",
            "a\u{0}b",
            "tab\there",
            non_ascii,
            &too_long,
        ] {
            assert_eq!(
                parse_client_hello(&hello_with_name(name)),
                Err(Error::BadServerName),
                "{name:?}"
            );
        }
        let invalid_utf8 = server_name_extension(&[(0, b"\xff\xfe")]);
        let buf = one_record(&client_hello_message(Some(&invalid_utf8)));
        assert_eq!(parse_client_hello(&buf), Err(Error::BadServerName));
    }

    #[test]
    fn duplicate_server_names_are_malformed() {
        let twice = [&sni("a.example")[..], &sni("a.example")].concat();
        let buf = one_record(&client_hello_message(Some(&twice)));
        assert_eq!(malformed_reason(&buf), "duplicate server_name extension");
        let two_hosts = server_name_extension(&[(0, b"a.example"), (0, b"b.example")]);
        let buf = one_record(&client_hello_message(Some(&two_hosts)));
        assert_eq!(malformed_reason(&buf), "more than one host_name");
    }

    /// Rewrites `message` (a ClientHello built by `client_hello_message`) with the byte at
    /// `offset` from the start of the body set to `value`.
    fn with_body_byte(message: &[u8], offset: usize, value: u8) -> Vec<u8> {
        let mut message = message.to_vec();
        message[4 + offset] = value;
        message
    }

    #[test]
    fn malformed_record_layer() {
        let hello = hello_with_name("example.com");
        let mut zero_length = hello.clone();
        zero_length[3..5].copy_from_slice(&[0, 0]);
        assert_eq!(malformed_reason(&zero_length), "record length");
        let mut too_big = hello.clone();
        too_big[3..5].copy_from_slice(&16385u16.to_be_bytes());
        assert_eq!(malformed_reason(&too_big[..5]), "record length");
        for version in [[0x02, 0x00], [0x03, 0x04], [0x04, 0x01]] {
            let mut bad = hello.clone();
            bad[1..3].copy_from_slice(&version);
            assert_eq!(malformed_reason(&bad), "record version", "{version:02x?}");
            assert_eq!(
                malformed_reason(&bad[..3]),
                "record version",
                "{version:02x?}"
            );
        }
        // A second record of another type before the ClientHello is whole.
        let message = client_hello_message(Some(&sni("example.com")));
        let mut split = records(&message, &[10, 0]);
        split[15] = 0x17;
        assert_eq!(
            malformed_reason(&split[..16]),
            "record type inside the ClientHello"
        );
        let mut split = records(&message, &[10, 0]);
        split[16] = 0x02;
        assert_eq!(malformed_reason(&split[..17]), "record version");
    }

    #[test]
    fn malformed_client_hello_fields() {
        let message = client_hello_message(Some(&sni("example.com")));
        // Body offsets: version 0, random 2, session_id length 34, cipher_suites length 67,
        // compression length 75, extensions length 77.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                [&[0x02][..], &message[1..]].concat(),
                "first handshake message is not a ClientHello",
            ),
            (with_body_byte(&message, 0, 0x02), "legacy_version"),
            (with_body_byte(&message, 1, 0x04), "legacy_version"),
            (with_body_byte(&message, 34, 33), "session_id length"),
            (with_body_byte(&message, 68, 0x05), "cipher_suites length"),
            (with_body_byte(&message, 68, 0x00), "cipher_suites length"),
            (
                with_body_byte(&message, 75, 0x00),
                "compression_methods length",
            ),
            (with_body_byte(&message, 78, 0xFF), "extensions length"),
            (with_body_byte(&message, 78, 0x01), "extensions length"),
        ];
        for (message, expected) in cases {
            assert_eq!(malformed_reason(&one_record(&message)), expected);
        }
        // Lengths that run past the end of their enclosing structure.
        let mut extension_too_long = sni("example.com");
        extension_too_long[3] += 1;
        let ext = [&extension_too_long[..], &[0, 0]].concat();
        let mut padded = extension(0x0015, &[0; 4]);
        padded[3] = 200;
        let list_mismatch = {
            let mut ext = sni("example.com");
            ext[5] += 1;
            ext
        };
        let name_past_list = {
            let mut ext = sni("example.com");
            ext[8] += 1;
            ext
        };
        let empty_list = extension(0x0000, &[0, 0]);
        let empty_extension = extension(0x0000, &[]);
        let trailing_in_extension = extension(0x0000, &[0, 3, 0, 0, 0, 0xAA]);
        for (extensions, expected) in [
            (ext, "server_name list length"),
            (padded, "extension length"),
            (list_mismatch, "server_name list length"),
            (name_past_list, "server_name length"),
            (empty_list, "server_name list length"),
            (empty_extension, "server_name list length"),
            (trailing_in_extension, "server_name list length"),
            (vec![0x00], "extension type"),
            (vec![0x00, 0x0a, 0x00], "extension length"),
        ] {
            let buf = one_record(&client_hello_message(Some(&extensions)));
            assert_eq!(malformed_reason(&buf), expected, "{extensions:02x?}");
        }
        // A handshake length shorter than the fields it should hold.
        let mut short = message.clone();
        short[3] = 50;
        short.truncate(54);
        assert_eq!(malformed_reason(&one_record(&short)), "session_id");
    }

    #[test]
    fn errors_are_reported_before_the_rest_arrives() {
        let message = client_hello_message(Some(&common_extensions(&sni("example.com"))));
        let bad_session_id = one_record(&with_body_byte(&message, 34, 33));
        assert_eq!(
            malformed_reason(&bad_session_id[..5 + 4 + 35]),
            "session_id length"
        );
        let bad_extensions_len = one_record(&with_body_byte(&message, 78, 0xFF));
        assert_eq!(
            malformed_reason(&bad_extensions_len[..5 + 4 + 79]),
            "extensions length"
        );
        let mut bad_name = hello_with_name("EXAMPLE.com");
        let at = bad_name.windows(7).position(|w| w == b"EXAMPLE").unwrap();
        bad_name[at] = 0;
        assert_eq!(
            parse_client_hello(&bad_name[..at + 11]),
            Err(Error::BadServerName)
        );
    }

    #[test]
    fn too_long() {
        // A handshake length past the limit is refused on the first 9 bytes.
        let huge = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x40, 0x00];
        assert_eq!(parse_client_hello(&huge), Err(Error::TooLong));
        // Padding up to exactly the limit is accepted...
        let fits = |padding: usize| {
            let extensions = [
                &sni("big.example")[..],
                &extension(0x0015, &vec![0; padding]),
            ]
            .concat();
            one_record(&client_hello_message(Some(&extensions)))
        };
        let base = fits(0).len();
        let exact = fits(MAX_CLIENT_HELLO - base);
        assert_eq!(exact.len(), MAX_CLIENT_HELLO);
        assert_eq!(server_name_of(&exact).as_deref(), Some("big.example"));
        // ...one byte more is not, and that is known from the headers alone.
        let over = fits(MAX_CLIENT_HELLO - base + 1);
        assert_eq!(parse_client_hello(&over[..9]), Err(Error::TooLong));
        // Record headers count too: a message that fits alone but not in many small records.
        let message = client_hello_message(Some(
            &[
                &sni("big.example")[..],
                &extension(0x0015, &vec![0; 15_600]),
            ]
            .concat(),
        ));
        assert!(message.len() + 5 <= MAX_CLIENT_HELLO);
        let fragmented = records(&message, &vec![100; message.len() / 100 + 1]);
        assert!(fragmented.len() > MAX_CLIENT_HELLO);
        let first_error = (0..=fragmented.len())
            .find(|&end| parse_client_hello(&fragmented[..end]).is_err())
            .unwrap();
        // As soon as the rest could no longer fit even if it all came in one more record.
        assert_eq!(
            parse_client_hello(&fragmented[..first_error - 1]),
            Ok(Peeked::Incomplete)
        );
        assert_eq!(
            parse_client_hello(&fragmented[..first_error]),
            Err(Error::TooLong)
        );
        assert_eq!(parse_client_hello(&fragmented), Err(Error::TooLong));
        assert!(
            first_error < MAX_CLIENT_HELLO,
            "found late, at {first_error}"
        );
    }

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let errors = [Error::Malformed("x"), Error::TooLong, Error::BadServerName];
        let reasons: Vec<_> = errors.iter().map(Error::reason).collect();
        assert_eq!(reasons, ["malformed", "too_long", "bad_server_name"]);
        assert!(errors.iter().all(|error| !error.to_string().is_empty()));
    }

    #[test]
    fn mutations_and_truncations_never_panic() {
        for (_, stream) in valid_vectors() {
            for end in 0..=stream.len() {
                let _ = parse_client_hello(&stream[..end]);
            }
            for index in 0..stream.len() {
                for mask in [0x01, 0x02, 0x10, 0x80, 0xFF] {
                    let mut mutated = stream.clone();
                    mutated[index] ^= mask;
                    let _ = parse_client_hello(&mutated);
                    let _ = parse_client_hello(&mutated[..index + 1]);
                }
                for value in [0x00, 0x01, 0x16, 0x20, 0x40, 0xFF] {
                    let mut mutated = stream.clone();
                    mutated[index] = value;
                    let _ = parse_client_hello(&mutated);
                }
            }
        }
    }

    /// Writes the vectors as the fuzz target's seed corpus:
    /// `FUZZ_CORPUS_DIR=fuzz/corpus cargo test --lib write_fuzz_corpus -- --ignored`
    #[test]
    #[ignore = "writes files; run by hand to refresh the fuzz corpus"]
    fn write_fuzz_corpus() {
        let root = std::env::var("FUZZ_CORPUS_DIR").expect("set FUZZ_CORPUS_DIR");
        let dir = std::path::Path::new(&root).join("client_hello");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in valid_vectors() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
