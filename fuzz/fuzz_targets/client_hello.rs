//! Any input: `parse_client_hello` never panics, a server name is always normalised, and bytes
//! after a complete ClientHello never change the answer.
#![no_main]

use l4relay::protocol::sni::{self, Peeked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = sni::parse_client_hello(data);
    match &result {
        Ok(Peeked::NotTls) => assert_ne!(data.first(), Some(&0x16)),
        Ok(Peeked::ClientHello { server_name }) => {
            if let Some(name) = server_name {
                assert!(!name.is_empty() && name.len() <= 255);
                assert!(name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
                assert!(!name.ends_with('.'));
            }
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0x16, 0x03, 0x01, 0xff, 0xff]);
            assert_eq!(sni::parse_client_hello(&longer), result);
        }
        Ok(Peeked::Incomplete) => assert!(data.len() < sni::MAX_CLIENT_HELLO),
        Err(_) => {}
    }
});
