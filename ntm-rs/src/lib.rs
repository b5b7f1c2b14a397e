//! ntm-rs: the NTMobile Relay Server.
