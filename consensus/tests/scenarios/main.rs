//! Scenario tests of `RaftServer`: single servers on disk and in-memory clusters.

mod blocking;
mod catalog;
mod cluster;
mod faults;
mod membership;
mod reads;
mod robustness;
mod single_node;
mod txn;
mod util;
