//! Image configs: parsing never panics, and chain IDs match the diff IDs.
#![no_main]

use berth_imageservice::{Digest, ImageConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let digest = Digest::sha256(data);
    if let Ok(config) = ImageConfig::parse(&digest, data) {
        assert_eq!(config.chain_ids().len(), config.rootfs.diff_ids.len());
    }
});
