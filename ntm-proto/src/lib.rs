//! NTMobile wire protocol v1, sans-IO: typed packet views, authentication, key wrap, replay window and signaling state machines.
