//! Opening LMDB environments with the settings both stores share, durable directory
//! creation, and storage usage.

use std::fs::File;
use std::path::Path;
use std::sync::RwLock;

use heed::{Env, EnvOpenOptions, WithoutTls};

use crate::error::StoreError;

/// Default size of each memory map (log and state machine). The data file is sparse and
/// the map is address space only, so a large map costs nothing until it is used; it only
/// bounds how far the file may grow.
#[cfg(target_pointer_width = "64")]
pub(crate) const DEFAULT_MAP_SIZE: usize = 64 << 30;
/// Default size of each memory map on targets with a small address space.
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const DEFAULT_MAP_SIZE: usize = 1 << 30;

/// Map sizes are rounded up to a multiple of this, which is a multiple of every page size
/// in use (4, 16 and 64 KiB); LMDB requires a multiple of the OS page size.
const MAP_SIZE_ALIGN: usize = 64 << 10;

/// Smallest accepted map size.
const MIN_MAP_SIZE: usize = 1 << 20;

/// Share of a map, in percent, above which the leader refuses writes that add data.
pub(crate) const FULL_PERCENT: u64 = 90;

/// Reader slots; every concurrent read transaction takes one.
const MAX_READERS: u32 = 512;

/// Opens (creating the directory if needed) an LMDB environment at `dir`: a sparse map
/// of `map_size` bytes, read transactions usable from any thread, and the default commit
/// flags, under which every commit is durable when it returns.
///
/// The configured size takes effect for an existing environment too: LMDB maps the size
/// given at open (or the data already in the file, if that is larger), so raising the
/// setting and restarting grows a full store.
pub(crate) fn open_env(
    dir: &Path,
    max_dbs: u32,
    map_size: usize,
) -> Result<Env<WithoutTls>, StoreError> {
    create_dir_durable(dir)?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(aligned_map_size(map_size))
        .max_dbs(max_dbs)
        .max_readers(MAX_READERS);
    // SAFETY: heed refuses to open an environment twice in one process, and the files are
    // only ever modified through LMDB.
    let env = unsafe { options.open(dir)? };
    // LMDB syncs its data file but not the directory entries of the files it creates.
    sync_dir(dir)?;
    Ok(env)
}

fn aligned_map_size(size: usize) -> usize {
    size.max(MIN_MAP_SIZE)
        .checked_next_multiple_of(MAP_SIZE_ALIGN)
        .unwrap_or(usize::MAX - usize::MAX % MAP_SIZE_ALIGN)
}

/// Creates `dir` and any missing parents, and makes their directory entries durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(path) = cur {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path);
        cur = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    // Each new directory's entry lives in its parent.
    for path in missing.iter().rev() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes the entries of directory `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// How full an environment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes in pages holding data (free pages excluded).
    pub(crate) used: u64,
    /// Size of the map.
    pub(crate) map_size: u64,
}

impl Usage {
    pub(crate) fn of(env: &Env<WithoutTls>) -> Result<Self, StoreError> {
        Ok(Usage {
            used: env.non_free_pages_size()?,
            map_size: env.info().map_size as u64,
        })
    }

    /// True when more than [`FULL_PERCENT`] of the map holds data.
    pub(crate) fn is_full(&self) -> bool {
        self.used.saturating_mul(100) >= self.map_size.saturating_mul(FULL_PERCENT)
    }
}

/// Watches the usage of the log and state machine environments, so the leader can refuse
/// writes before LMDB runs out of map (which would stop every node at the same entry).
/// Holds handles on the environments until [`close`](Self::close).
pub(crate) struct StorageMonitor {
    envs: RwLock<Vec<(&'static str, Env<WithoutTls>)>>,
}

impl StorageMonitor {
    pub(crate) fn new(envs: Vec<(&'static str, Env<WithoutTls>)>) -> Self {
        StorageMonitor {
            envs: RwLock::new(envs),
        }
    }

    /// A description of the first environment above the threshold, if any.
    pub(crate) fn full(&self) -> Option<String> {
        let envs = self.envs.read().unwrap_or_else(|p| p.into_inner());
        for (name, env) in envs.iter() {
            match Usage::of(env) {
                Ok(usage) if usage.is_full() => {
                    return Some(format!(
                        "the {name} store holds {} of its {} byte map (limit {FULL_PERCENT}%)",
                        usage.used, usage.map_size
                    ));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, store = name, "cannot read storage usage"),
            }
        }
        None
    }

    /// Drops the environment handles.
    pub(crate) fn close(&self) {
        self.envs.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_sizes_are_aligned() {
        assert_eq!(aligned_map_size(0), MIN_MAP_SIZE);
        assert_eq!(aligned_map_size((1 << 20) + 1), (1 << 20) + MAP_SIZE_ALIGN);
        assert_eq!(aligned_map_size(DEFAULT_MAP_SIZE), DEFAULT_MAP_SIZE);
        assert_eq!(aligned_map_size(usize::MAX) % MAP_SIZE_ALIGN, 0);
    }

    #[test]
    fn larger_map_at_reopen_makes_room() {
        use heed::byteorder::BigEndian;
        use heed::types::{Bytes, U32};

        let dir = tempfile::tempdir().unwrap();
        let value = vec![7u8; 64 << 10];
        let fill = |env: &Env<WithoutTls>, from: u32| -> Result<u32, heed::Error> {
            let mut n = from;
            loop {
                let mut txn = env.write_txn()?;
                let db: heed::Database<U32<BigEndian>, Bytes> =
                    env.create_database(&mut txn, Some("t"))?;
                db.put(&mut txn, &n, &value)?;
                txn.commit()?;
                n += 1;
                if n > from + 64 {
                    return Ok(n);
                }
            }
        };
        {
            let env = open_env(dir.path(), 2, 1 << 20).unwrap();
            assert!(matches!(
                fill(&env, 0),
                Err(heed::Error::Mdb(heed::MdbError::MapFull))
            ));
            assert!(Usage::of(&env).unwrap().is_full());
            env.prepare_for_closing().wait();
        }
        let env = open_env(dir.path(), 2, 16 << 20).unwrap();
        assert_eq!(Usage::of(&env).unwrap().map_size, 16 << 20);
        assert!(!Usage::of(&env).unwrap().is_full());
        fill(&env, 1000).unwrap();
    }
}
