//! Feeds arbitrary bytes to every decoding entry point: none may panic, and a
//! frame that decodes must re-encode to exactly the bytes it came from.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use net::frame::split_frame;
use net::{Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { frame_size_max: 1 << 20 };
    let bytes = Bytes::copy_from_slice(data);
    if let Ok((frame, length)) = Frame::decode_bytes(&bytes, &limits) {
        assert_eq!(frame.to_bytes(), bytes.slice(..length));
    }
    let mut stream = BytesMut::from(data);
    while let Ok(Some(raw)) = split_frame(&mut stream, &limits) {
        let _ = Frame::decode(raw);
    }
});
