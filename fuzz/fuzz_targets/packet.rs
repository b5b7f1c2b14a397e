//! The header/packet view: every accessor after `new_checked`, the header
//! checks, suite-1 tag verification and `Cipher::open` in both suites must
//! never panic, and arbitrary bytes never verify or open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntm_proto::{Authenticator, Cipher, Key, Packet, Suite};

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes([0x20; 32]);
    let auth = Authenticator::new(&key);
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.msg_type(),
            p.flags(),
            p.response_required(),
            p.suite(),
            p.id(),
            p.seq(),
        );
        assert_eq!(p.body().len() + 32, data.len());
        assert_eq!(p.authenticated().len() + p.tag().len(), data.len());
        let _ = p.check_header();
        let _ = auth.verify(data);
    } else {
        assert!(auth.verify(data).is_err() || data.len() > 65_507);
    }
    for suite in [Suite::HmacSha256_128, Suite::Aes256Gcm] {
        let c = Cipher::new(suite, &key).unwrap();
        let mut d = data.to_vec();
        assert!(c.open(&mut d).is_err(), "{suite:?} opened arbitrary bytes");
    }
});
