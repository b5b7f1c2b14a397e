//! XDP programs of ntma (placeholder until the platform work lands).
#![no_std]
#![no_main]
