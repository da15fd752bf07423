//! Opening LMDB environments with the settings both stores share.

use std::path::Path;

use heed::{Env, EnvOpenOptions, WithoutTls};

use crate::error::StoreError;

/// Size of the memory map. The file is sparse, so this only bounds its growth.
const MAP_SIZE: usize = 8 << 30;

/// Reader slots; every concurrent read transaction takes one.
const MAX_READERS: u32 = 512;

/// Opens (creating the directory if needed) an LMDB environment at `dir`: a large sparse
/// map, read transactions usable from any thread, and the default commit flags, under
/// which every commit is durable when it returns.
pub(crate) fn open_env(dir: &Path, max_dbs: u32) -> Result<Env<WithoutTls>, StoreError> {
    std::fs::create_dir_all(dir)?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(MAP_SIZE)
        .max_dbs(max_dbs)
        .max_readers(MAX_READERS);
    // SAFETY: heed refuses to open an environment twice in one process, and the files are
    // only ever modified through LMDB.
    let env = unsafe { options.open(dir)? };
    Ok(env)
}
