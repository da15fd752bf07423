//! `<data-dir>/members` (and `<data-dir>/members-wan` for a server's WAN pool): what a
//! restarted agent needs to rejoin without `--join`.
//!
//! The file holds the gossip generation of the last start (bumped at every start, so a
//! restarted node supersedes its old self whatever the clock says) and the addresses of
//! the members last known, and the user event clock (so that old events do not fire
//! again). It is written whole to a temporary file, fsynced and renamed,
//! so a crash leaves either the old or the new file.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// File name inside the data dir (LAN pool).
pub const FILE: &str = "members";

/// File name inside the data dir of the WAN pool's members.
pub const WAN_FILE: &str = "members-wan";

/// At most this many addresses are kept: enough to find the cluster again.
pub const MAX_PEERS: usize = 256;

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersFile {
    /// Gossip generation of the last start.
    pub generation: u64,
    /// Addresses of members last known alive.
    pub peers: Vec<SocketAddr>,
    /// The user event Lamport clock: events below it were handled before (or missed) and
    /// must not fire again after a restart.
    #[serde(default)]
    pub event_ltime: u64,
}

impl MembersFile {
    /// Path of the LAN pool's file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Path of the WAN pool's file in `data_dir`.
    pub fn wan_path(data_dir: &Path) -> PathBuf {
        data_dir.join(WAN_FILE)
    }

    /// Reads the LAN pool's file in `data_dir` (see [`MembersFile::load_from`]).
    pub fn load(data_dir: &Path) -> anyhow::Result<MembersFile> {
        Self::load_from(&Self::path(data_dir))
    }

    /// Writes the LAN pool's file in `data_dir` (see [`MembersFile::save_to`]).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        self.save_to(&Self::path(data_dir))
    }

    /// Reads the file at `path`; a missing file is an empty state. A corrupt file is
    /// reported, not ignored: the operator must see that the generation is unknown.
    pub fn load_from(path: &Path) -> anyhow::Result<MembersFile> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid members file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MembersFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file at `path` atomically and durably.
    pub fn save_to(&self, path: &Path) -> anyhow::Result<()> {
        let mut peers = self.peers.clone();
        peers.truncate(MAX_PEERS);
        let body = serde_json::to_vec_pretty(&MembersFile {
            generation: self.generation,
            peers,
            event_ltime: self.event_ltime,
        })?;
        crate::data_file::write_atomic(path, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            MembersFile::load(dir.path()).unwrap(),
            MembersFile::default()
        );
        let saved = MembersFile {
            generation: 7,
            peers: vec!["127.0.0.2:8301".parse().unwrap()],
            event_ltime: 12,
        };
        saved.save(dir.path()).unwrap();
        assert_eq!(MembersFile::load(dir.path()).unwrap(), saved);
    }

    #[test]
    fn a_file_without_an_event_clock_starts_it_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            MembersFile::path(dir.path()),
            r#"{"generation": 3, "peers": []}"#,
        )
        .unwrap();
        let loaded = MembersFile::load(dir.path()).unwrap();
        assert_eq!((loaded.generation, loaded.event_ltime), (3, 0));
    }

    #[test]
    fn corrupt_file_is_an_error_and_peers_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(MembersFile::path(dir.path()), "{").unwrap();
        assert!(MembersFile::load(dir.path()).is_err());
        let many = MembersFile {
            event_ltime: 0,
            generation: 1,
            peers: (0..1000u16)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        };
        many.save(dir.path()).unwrap();
        assert_eq!(
            MembersFile::load(dir.path()).unwrap().peers.len(),
            MAX_PEERS
        );
    }
}
