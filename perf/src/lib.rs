//! ntma benchmarks: datapaths side by side on the testbed.
