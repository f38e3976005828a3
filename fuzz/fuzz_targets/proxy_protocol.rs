//! Any input: `parse` never panics, a complete header never claims bytes it was not given, and
//! the addresses it yields survive a round trip through both encoders.
#![no_main]

use l4relay::protocol::proxy_protocol::{self, Accept, Header, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        let Ok(Parsed::Complete { header, len }) = proxy_protocol::parse(data, accept) else {
            let _ = proxy_protocol::bytes_needed(data);
            continue;
        };
        assert!(len <= data.len());
        assert!(len <= proxy_protocol::MAX_V2_LEN);
        assert_eq!(proxy_protocol::bytes_needed(&data[..len]), len);
        // Nothing past the header was looked at, and one byte less is still a valid beginning.
        let exact = proxy_protocol::parse(&data[..len], accept);
        assert_eq!(
            exact,
            Ok(Parsed::Complete {
                header: header.clone(),
                len
            })
        );
        assert_eq!(
            proxy_protocol::parse(&data[..len - 1], accept),
            Ok(Parsed::Incomplete)
        );
        round_trip(&header);
    }
});

fn round_trip(header: &Header) {
    let Some((source, destination)) = header.addresses else {
        return;
    };
    let mut out = Vec::new();
    proxy_protocol::encode_v2(source, destination, header.vpce_id.as_ref(), &mut out);
    let again = complete(&out, Accept::V2);
    assert_eq!(again.addresses, header.addresses);
    assert_eq!(again.vpce_id, header.vpce_id);

    out.clear();
    proxy_protocol::encode_v1(source, destination, &mut out);
    assert!(out.len() <= proxy_protocol::MAX_V1_LEN);
    assert_eq!(complete(&out, Accept::V1).addresses, header.addresses);
}

fn complete(encoded: &[u8], accept: Accept) -> Header {
    match proxy_protocol::parse(encoded, accept) {
        Ok(Parsed::Complete { header, len }) if len == encoded.len() => header,
        other => panic!("encoded header {encoded:02x?} parsed as {other:?}"),
    }
}
