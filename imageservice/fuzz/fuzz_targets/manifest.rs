//! Manifests and indexes of every media type: parsing never panics.
#![no_main]

use berth_imageservice::testing::Manifest;
use berth_imageservice::Digest;
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[usize::from(selector) % MEDIA_TYPES.len()];
    let digest = Digest::sha256(bytes);
    let _ = Manifest::parse(media_type, &digest, bytes);
});
