//! berth's shim is a binary (`main.rs`, containerd-shim-berth-v2); this
//! library holds the one piece of it that stands alone, the CRI log record
//! format, so that the binary and the fuzz target (`shim/fuzz`) share it.

#![forbid(unsafe_code)]

pub mod cri_record;
