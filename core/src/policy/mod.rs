//! WAN bandwidth policy (stub while writing).
