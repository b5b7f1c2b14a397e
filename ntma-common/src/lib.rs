//! Types shared by the ntma XDP programs and userspace: map layouts, counters, constants (no_std).
