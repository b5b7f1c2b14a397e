//! ntm-node: a software NTMobile node for Linux (TUN + UDP).
