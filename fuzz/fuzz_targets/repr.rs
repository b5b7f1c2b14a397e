//! The message parser: `Repr::parse` on arbitrary datagrams, and for what
//! parses, emit → parse gives the same meaning and emit is then stable
//! (smoltcp's parse→emit target).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntm_proto::wire::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    let mut first = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut first[..]));
    let again =
        Repr::parse(&Packet::new_checked(&first[..]).expect("emitted datagram has a header"))
            .expect("emitted datagram parses");
    assert_eq!(again.header, repr.header);
    assert_eq!(again.message, repr.message);
    let mut second = vec![0u8; again.buffer_len()];
    again.emit(&mut Packet::new_unchecked(&mut second[..]));
    assert_eq!(first, second);
});
