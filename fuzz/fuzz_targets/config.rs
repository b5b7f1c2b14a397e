//! The four daemons' configuration parsers on arbitrary TOML text: the first byte picks
//! the daemon (ntma, ntm-dc, ntm-rs, ntm-node), the rest is the text (lossy UTF-8).
//! `from_toml`, then `validate` on what parsed; a valid configuration is written back
//! with `to_toml`, which must parse again and validate the same way. Nothing may panic.
//! Seeds: the example configurations.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Parse, validate, and for a valid one: write back, parse and validate again.
macro_rules! check {
    ($parse:expr, $text:expr) => {{
        let parse = $parse;
        if let Ok(c) = parse($text) {
            if c.validate().is_ok() {
                let again = c.to_toml();
                let c2 = parse(&again).expect("to_toml wrote what from_toml refuses");
                assert!(
                    c2.validate().is_ok(),
                    "valid, written back, invalid:\n{again}"
                );
            }
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    match which % 4 {
        0 => check!(
            |t: &str| ntma_user::config::Config::from_toml(t, Path::new("fuzz.toml")),
            &text
        ),
        1 => check!(ntm_dc::Config::from_toml, &text),
        2 => check!(ntm_rs::Config::from_toml, &text),
        _ => check!(ntm_node::Config::from_toml, &text),
    }
});
