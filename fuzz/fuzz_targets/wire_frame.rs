//! Every `oasis/1` frame a peer can send (chunks, manifests, inventory and wake, uploads,
//! snapshots, provisioning): the first byte is the frame type, the rest its body, as
//! `read_frame` hands them over. Decoding never panics, and what decodes encodes back to a
//! frame that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_proto::wire::Frame;

fuzz_target!(|data: &[u8]| {
    let Some((&ty, body)) = data.split_first() else { return };
    if let Ok(frame) = Frame::decode(ty, bytes::Bytes::copy_from_slice(body)) {
        let again = frame.to_bytes();
        // `to_bytes` is the whole frame: u32 length, type, body.
        let decoded = Frame::decode(again[4], again.slice(5..)).expect("an encoded frame decodes");
        assert_eq!(format!("{decoded:?}"), format!("{frame:?}"));
    }
});
