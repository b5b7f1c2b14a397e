//! The header/packet view: every accessor after `new_checked`, the header
//! checks and tag verification must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntm_proto::{Authenticator, Key, Packet};

fuzz_target!(|data: &[u8]| {
    let auth = Authenticator::new(&Key::from_bytes([0x20; 32]));
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
});
