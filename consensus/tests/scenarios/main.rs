//! Scenario tests of `RaftServer`: single servers on disk and in-memory clusters.

mod cluster;
mod single_node;
