//! The header-block decoder: a sequence of compressed blocks on one
//! context (each prefixed by a 2-byte length) decodes or fails precisely,
//! never past its decompressed-size cap, and what decodes round-trips
//! through a fresh encoder/decoder pair.
#![no_main]

use berth_spdy::headers::{HeaderDecoder, HeaderEncoder};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut decoder = HeaderDecoder::new(MAX);
    let mut encoder = HeaderEncoder::new().expect("encoder");
    let mut again = HeaderDecoder::new(usize::MAX >> 1);
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (block, tail) = tail.split_at(len);
        rest = tail;
        let Ok(headers) = decoder.decode(block) else {
            return;
        };
        let mut wire = Vec::new();
        encoder.encode(&headers, &mut wire).expect("decoded headers encode");
        assert_eq!(again.decode(&wire).expect("encoded headers decode"), headers);
    }
});
