//! The node's stable identity on disk: `<data-dir>/node-id`, a UUID made once.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use uuid::Uuid;

/// File name of the node id inside the data dir.
pub const FILE: &str = "node-id";

/// Reads the node id from `dir`, or makes one and saves it durably.
pub fn load_or_create(dir: &Path) -> anyhow::Result<Uuid> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim())
            .with_context(|| format!("{} does not hold a UUID", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            crate::data_file::write_atomic(&path, id.to_string().as_bytes())?;
            Ok(id)
        }
        Err(e) => bail!("reading {}: {e}", path.display()),
    }
}

/// The Raft id of a server: the node id's first 64 bits (never 0).
pub fn raft_id(node_id: &Uuid) -> u64 {
    let bytes = node_id.as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(raft_id(&first), raft_id(&second));
    }

    #[test]
    fn a_corrupt_node_id_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "not a uuid").unwrap();
        let error = load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("does not hold a UUID"));
    }
}
