//! Scenario tests of `RaftServer`: single servers on disk and in-memory clusters.

mod cluster;
mod robustness;
mod single_node;
