//! The TLV iterator: framing of arbitrary bodies; every yielded value lies
//! inside the body and the iterator ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntm_proto::wire::{TlvIter, TLV_HEADER_LEN};

fuzz_target!(|body: &[u8]| {
    let mut consumed = 0usize;
    for item in TlvIter::new(body) {
        match item {
            Ok(tlv) => consumed += TLV_HEADER_LEN + tlv.value.len(),
            Err(_) => return,
        }
    }
    assert_eq!(consumed, body.len());
});
