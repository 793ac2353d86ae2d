//! Gossipsub peer scoring: a neighbour that passes on messages this node rejects (bad bindings,
//! undecodable or impossible gossip) loses score and, past the graylist threshold, is not
//! listened to until its score decays.
//!
//! Only invalid deliveries count. The other score terms reward or punish how a peer takes part
//! in the gossip mesh (time in mesh, first deliveries, delivery rates); a site mesh is a handful
//! of quiet nodes, where those terms would punish honest peers for having little to say. The IP
//! colocation term is off too: a site's reflectors often share one address behind a NAT.

use libp2p::gossipsub::{PeerScoreParams, PeerScoreThresholds, TopicHash, TopicScoreParams};
use std::time::Duration;

/// Score lost per invalid message, squared over the count (gossipsub's P4): nine invalid
/// messages in quick succession cross [`GRAYLIST_THRESHOLD`].
pub const INVALID_MESSAGE_WEIGHT: f64 = -1.0;
/// What is left of the invalid-message count after each second: one invalid message a second,
/// kept up, holds a peer graylisted (its count settles at ten).
pub const INVALID_MESSAGE_DECAY: f64 = 0.9;
/// Below this score a peer's messages are not taken at all.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// The score parameters for this node's `topics`.
pub fn peer_score(topics: &[TopicHash]) -> (PeerScoreParams, PeerScoreThresholds) {
    let mut params = PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        // The application score is the gate of `task::direct`, in score units.
        app_specific_weight: 1.0,
        decay_interval: Duration::from_secs(1),
        ..PeerScoreParams::default()
    };
    for t in topics {
        params.topics.insert(
            t.clone(),
            TopicScoreParams {
                topic_weight: 1.0,
                time_in_mesh_weight: 0.0,
                first_message_deliveries_weight: 0.0,
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
                invalid_message_deliveries_decay: INVALID_MESSAGE_DECAY,
                ..TopicScoreParams::default()
            },
        );
    }
    let thresholds = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..PeerScoreThresholds::default()
    };
    (params, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_valid_for_gossipsub() {
        let (params, thresholds) = peer_score(&[TopicHash::from_raw("oasis/mesh/1")]);
        params.validate().unwrap();
        thresholds.validate().unwrap();
    }
}
