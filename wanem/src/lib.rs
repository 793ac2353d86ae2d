//! `oasis-wanem`: a userspace WAN link emulator for UDP (and so for QUIC), for tests,
//! benchmarks and the demo.
//!
//! Why: Oasis's WAN figures were measured on loopback, with no delay and no loss, where every
//! transport looks perfect. `tc netem` is the usual tool but needs root, a kernel with the
//! `sch_netem` module, and cannot be used per test on shared CI machines. This crate does the
//! same job in the process: an [`Emulator`] is a UDP relay that clients talk to instead of the
//! server; it forwards to the real server address and relays the answers back, applying a
//! [`LinkSpec`] in each direction. Each client address gets its own upstream socket (like a
//! NAT binding), so several clients can share one emulated path, and one bottleneck.
//!
//! # The model
//!
//! Each direction is one [`LinkModel`]. A packet entering it at time `t` meets, in order:
//!
//! 1. **Loss.** A Bernoulli draw with probability `loss`, then (if configured) a
//!    Gilbert–Elliott chain (`p` good->bad, `r` bad->good, a loss probability in each state)
//!    stepped once per packet. Either one losing the packet drops it. Loss comes first: a
//!    packet lost on the path takes no room in the bottleneck queue.
//! 2. **Bottleneck.** A FIFO drained at `rate` bit/s, counting each packet as its UDP payload
//!    plus `overhead` (28 bytes of IPv4 + UDP headers by default). The queue holds at most
//!    `queue` bytes, including the packet being serialized; a packet that does not fit is
//!    dropped (tail drop). An accepted packet leaves the bottleneck once every byte before it
//!    and its own have been serialized, so a burst builds queueing delay exactly as on a real
//!    bottleneck, and a sender faster than the rate fills the queue and then loses packets.
//! 3. **Propagation delay and jitter.** The packet then travels `delay`, plus a jitter offset
//!    in `[-jitter, +jitter]` that wanders along a piecewise-linear random path (slope at
//!    most 1/2): delays vary, but a packet never overtakes the one before it, and the mean
//!    delay stays `delay`.
//! 4. **Reordering.** With probability `reorder` a packet is held back by `reorder_delay`;
//!    the packets behind it pass it. This is the only stage that reorders: with `reorder` at
//!    0, packets come out in the order they went in.
//!
//! All random decisions come from a fixed `seed`, one independent stream per stage and
//! direction: the n-th loss decision depends only on the seed and n (not on timing, jitter or
//! rate), so a lossy run drops the same packet numbers every time.
//!
//! Delivery runs on tokio timers, which have a resolution of 1 ms: a packet comes out at the
//! first timer tick at or after its delivery time (never early, typically up to ~1 ms late,
//! more on a loaded machine), and the packets due within one tick leave together.
//!
//! # Counting
//!
//! [`Counters`] count UDP payload bytes and packets per direction: offered, delivered,
//! lost, queue-dropped, send-failed, and (by difference) in flight; at any snapshot
//! `offered = delivered + lost + queue_dropped + send_failed + in_flight`.
//! [`Emulator::socket_drops`] reports what the kernel dropped on the relay's own sockets,
//! which should stay 0 (if not, the relay itself was the bottleneck).
//!
//! # String form
//!
//! `"80ms,0.5%,100Mbit"` is RTT (half each way), random loss (each way) and rate (each way),
//! optionally followed by `key=value` items such as `jitter=5ms`, `queue=256KiB`,
//! `reorder=1%`, `ge=p:0.01/r:0.3/bad:50%`, `seed=7`, or `up.rate=10Mbit` for one direction.
//! See [`WanSpec`] and the [`spec`] module.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use oasis_wanem::{Emulator, WanSpec};
//! let spec: WanSpec = "80ms,0.5%,100Mbit".parse().unwrap();
//! let server = "127.0.0.1:7443".parse().unwrap();
//! let wan = Emulator::start("127.0.0.1:0".parse().unwrap(), server, spec).await?;
//! // point the client at wan.local_addr() instead of the server
//! let c = wan.counters();
//! println!("down: {} delivered, {} lost", c.down.delivered_bytes, c.down.lost_packets);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod emulator;
pub mod model;
pub mod spec;

pub use emulator::{bind_udp, Counters, Emulator, EmulatorThread};
pub use model::{DirectionCounters, LinkModel, Verdict};
pub use spec::{GilbertElliott, LinkSpec, Probability, SpecError, WanSpec};
