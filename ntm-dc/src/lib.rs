//! ntm-dc: the NTMobile Direction Coordinator.
