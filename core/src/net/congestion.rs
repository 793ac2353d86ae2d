//! The congestion controller of every Oasis QUIC connection, `oasis_proto::congestion`
//! (re-exported here), and the one call that needs a live connection.

pub use oasis_proto::congestion::*;

use std::sync::Arc;

/// The yield switch of `conn`'s controller, when it is a [`PipeController`]. quinn hands out
/// a copy of the controller; the copy shares the switch with the live one.
pub fn yield_switch(conn: &quinn::Connection) -> Option<Arc<YieldSwitch>> {
    conn.congestion_state().into_any().downcast::<PipeController>().ok()?.switch()
}
