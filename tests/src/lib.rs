//! Workspace-level integration tests live in `tests/`: real seeds, reflectors and endpoints
//! over QUIC on 127.0.0.1. Their harness is the `oasis-testkit` crate.
