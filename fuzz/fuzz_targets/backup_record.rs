//! A device snapshot record as an endpoint uploads it and the seed reads it back: decoded,
//! then everything the seed computes from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_proto::backup::SnapshotRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SnapshotRecord::decode(data) {
        let _ = r.unique_chunks();
        let _ = r.totals();
        let _ = r.layers_label();
        let again = r.encode();
        assert_eq!(SnapshotRecord::decode(&again).ok().as_ref(), Some(&r), "a record round-trips");
    }
});
