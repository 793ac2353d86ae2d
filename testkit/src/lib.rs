//! The harness the workspace's tests, benchmarks and the simulator's live runs share: a real
//! seed on 127.0.0.1 with its authority and the nodes it enrolls ([`seed`]), trees to publish
//! and compare ([`trees`]), reflector meshes on loopback ([`mesh`]), misbehaving sources ([`sources`]) and byte-counter samplers
//! ([`rates`]). A development crate: no daemon depends on it.

pub mod chunks;
pub mod mesh;
pub mod rates;
pub mod seed;
pub mod sources;
pub mod trees;
pub mod wait;

pub use chunks::get_verified;
pub use mesh::{loopback_mesh, mesh_addr, settle};
pub use rates::{measure_rate, window_rates, RateSampler, Samples};
pub use seed::{http_get, TestSeed};
pub use sources::CorruptingSource;
pub use trees::{
    copy_tree, mutate_tree, random_tree, snapshot, snapshot_meta, wide_tree, TreeSpec,
};
pub use wait::wait_until;
