//! The frame parser: any byte stream decodes to frames or a precise error,
//! never a panic or an allocation beyond the limits, and every frame it
//! yields encodes and decodes again to itself (header blocks included, on
//! a second pair of compression contexts kept in step).
#![no_main]

use berth_spdy::frame::{Frame, FrameDecoder, Limits};
use berth_spdy::headers::HeaderEncoder;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_control: 16 * 1024,
    max_data: 64 * 1024,
    max_header_block: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(LIMITS);
    let mut encoder = HeaderEncoder::new().expect("encoder");
    let mut again = FrameDecoder::new(Limits {
        max_control: 0x00ff_ffff,
        max_data: 0x00ff_ffff,
        max_header_block: 1 << 20,
    });
    let mut input = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut input) {
        if matches!(frame, Frame::Unknown { .. }) {
            continue;
        }
        let mut wire = Vec::new();
        frame.encode(&mut encoder, &mut wire).expect("a decoded frame encodes");
        let mut wire = BytesMut::from(&wire[..]);
        let back = again
            .decode(&mut wire)
            .expect("an encoded frame decodes")
            .expect("whole");
        assert_eq!(back, frame);
        assert!(wire.is_empty());
    }
});
