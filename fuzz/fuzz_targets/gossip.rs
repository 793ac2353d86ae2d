//! A gossip message from an admitted mesh peer: decoded, admitted as inventory when it is one,
//! and applied to a view, as the mesh task does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_proto::gossip::{inventory::admit_inventory, Body, GossipMsg, GossipView, PeerRef};
use oasis_proto::names::{PeerInfo, Role};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = GossipMsg::decode(data) else { return };
    let sender = PeerInfo::new(Role::Reflector, "refl-1", Some("lyon")).expect("valid");
    if let Body::Inventory(records) = &msg.body {
        let _ = admit_inventory(records, &sender, Some("lyon"), 1_700_000_000);
    }
    let mut view = GossipView::new(Duration::from_secs(1));
    let from = PeerRef(b"fuzz-peer".to_vec());
    let _ = view.apply(&msg, &from, Duration::from_secs(5));
    let _ = view.apply(&msg, &from, Duration::from_secs(6));
    let _ = view.expire(Duration::from_secs(60));
});
