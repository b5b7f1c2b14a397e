//! The ntma testbed: network namespaces, veths, bridge and NAT of shared/TESTBED.md, as a library with a teardown guard.
