//! Snapshot files: their format, building them from the state machine, installing them
//! into it, and keeping the current one on disk.
//!
//! # Format
//! An 8-byte magic, then frames of `u32` little-endian length + postcard [`Record`]: one
//! `Header` (snapshot meta and the KV table index), the KV entries, the tombstones, and an
//! `End` record with the counts, so a truncated file is detected.
//!
//! # Files
//! `<data>/snapshots/current.snap` is the current snapshot. New files are written under a
//! temporary name, fsynced, and renamed over it (then the directory is fsynced), so a
//! crash leaves either the old or the new snapshot. Snapshots being received are
//! `recv-N.part`. Leftover temporary files are removed at startup.
//!
//! Snapshot data is a `tokio::fs::File`, so a snapshot is never held in memory whole.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::sm_db::SmDb;
use crate::types::{KvEntry, NodeId, ServerNode};

const MAGIC: &[u8; 8] = b"KVSNAP01";
const CURRENT: &str = "current.snap";
const TMP_SUFFIX: &str = ".tmp";
const PART_SUFFIX: &str = ".part";

/// Largest frame accepted when reading; a KV entry is at most ~513 KiB.
const MAX_FRAME: usize = 4 << 20;

/// Metadata of a snapshot as openraft sees it.
pub(crate) type Meta = SnapshotMeta<NodeId, ServerNode>;

/// One frame of a snapshot file.
#[derive(Serialize, Deserialize)]
enum Record {
    Header { meta: Meta, kv_index: u64 },
    Entry(KvEntry),
    Tombstone { key: String, index: u64 },
    End { entries: u64, tombstones: u64 },
}

struct Current {
    meta: Option<Meta>,
    next_file: u64,
}

/// The snapshot directory of one node.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    state: Mutex<Current>,
}

impl SnapshotDir {
    /// Opens `dir`, removing leftover temporary files and reading the current snapshot's
    /// header. An unreadable current snapshot is removed: the state machine is durable on
    /// its own and openraft builds a new snapshot when it needs one.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(TMP_SUFFIX) || name.ends_with(PART_SUFFIX) {
                fs::remove_file(&path)?;
            }
        }
        let current_path = dir.join(CURRENT);
        let meta = match File::open(&current_path) {
            Ok(mut file) => match read_header(&mut file) {
                Ok((meta, _)) => Some(meta),
                Err(e) => {
                    tracing::warn!(error = %e, "removing unreadable snapshot");
                    fs::remove_file(&current_path)?;
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(SnapshotDir {
            dir: dir.to_owned(),
            state: Mutex::new(Current { meta, next_file: 0 }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_path(&self, suffix: &str) -> PathBuf {
        let n = {
            let mut state = self.lock();
            state.next_file += 1;
            state.next_file
        };
        self.dir.join(format!("snap-{n}{suffix}"))
    }

    /// The current snapshot: its meta and an open handle at offset 0.
    pub(crate) fn current(&self) -> Result<Option<(Meta, File)>, StoreError> {
        let state = self.lock();
        let Some(meta) = state.meta.clone() else {
            return Ok(None);
        };
        let file = File::open(self.dir.join(CURRENT))?;
        Ok(Some((meta, file)))
    }

    /// A fresh file for receiving a snapshot; earlier incomplete receives are removed.
    pub(crate) fn receive_path(&self) -> Result<PathBuf, StoreError> {
        self.remove_parts()?;
        Ok(self.new_path(PART_SUFFIX))
    }

    fn remove_parts(&self) -> Result<(), StoreError> {
        for item in fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) == Some(&PART_SUFFIX[1..]) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Writes a snapshot of the state machine's current state (one read transaction) and
    /// makes it current unless a newer one already is. Returns its meta and a handle to
    /// its data at offset 0.
    pub(crate) fn build(&self, db: &SmDb) -> Result<(Meta, File), StoreError> {
        let tmp = self.new_path(TMP_SUFFIX);
        let result = self.build_into(db, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn build_into(&self, db: &SmDb, tmp: &Path) -> Result<(Meta, File), StoreError> {
        let txn = db.read_txn()?;
        let last_log_id = db.applied(&txn)?;
        let meta = Meta {
            last_log_id,
            last_membership: db.membership(&txn)?,
            snapshot_id: snapshot_id(last_log_id.map(|id| id.index)),
        };
        let kv_index = db.kv_index(&txn)?;

        let mut out = BufWriter::new(File::create(tmp)?);
        out.write_all(MAGIC)?;
        write_record(
            &mut out,
            &Record::Header {
                meta: meta.clone(),
                kv_index,
            },
        )?;
        let mut entries = 0;
        db.for_each_entry(&txn, &mut |e| {
            entries += 1;
            write_record(&mut out, &Record::Entry(e))
        })?;
        let mut tombstones = 0;
        db.for_each_tombstone(&txn, &mut |key, index| {
            tombstones += 1;
            write_record(
                &mut out,
                &Record::Tombstone {
                    key: key.to_owned(),
                    index,
                },
            )
        })?;
        drop(txn);
        write_record(
            &mut out,
            &Record::End {
                entries,
                tombstones,
            },
        )?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);

        // Open before publishing: if a newer snapshot wins, the file is unlinked but
        // this handle still reads it.
        let data = File::open(tmp)?;
        self.publish(tmp, &meta, false)?;
        Ok((meta, data))
    }

    /// Replaces the state machine's state with the snapshot read from `data` (from
    /// offset 0), in one write transaction, and makes the snapshot current.
    ///
    /// The data is first copied into a file of this directory, so the snapshot stays
    /// available whatever `data` refers to.
    pub(crate) fn install(
        &self,
        db: &SmDb,
        data: &mut File,
        meta: &Meta,
    ) -> Result<(), StoreError> {
        let tmp = self.new_path(TMP_SUFFIX);
        let result = self.install_from(db, data, meta, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn install_from(
        &self,
        db: &SmDb,
        data: &mut File,
        meta: &Meta,
        tmp: &Path,
    ) -> Result<(), StoreError> {
        data.seek(SeekFrom::Start(0))?;
        let mut copy = File::create(tmp)?;
        io::copy(data, &mut copy)?;
        copy.sync_all()?;
        drop(copy);

        let mut input = BufReader::new(File::open(tmp)?);
        let (header, kv_index) = read_header(&mut input)?;
        if header.last_log_id != meta.last_log_id || header.last_membership != meta.last_membership
        {
            return Err(StoreError::Corrupt(format!(
                "snapshot data is {header} but was announced as {meta}"
            )));
        }

        let mut txn = db.env.write_txn()?;
        db.clear(&mut txn)?;
        let (mut entries, mut tombstones) = (0u64, 0u64);
        loop {
            match read_record(&mut input)? {
                Record::Entry(e) => {
                    db.put_entry(&mut txn, &e)?;
                    entries += 1;
                }
                Record::Tombstone { key, index } => {
                    db.put_tombstone(&mut txn, &key, index)?;
                    tombstones += 1;
                }
                Record::End {
                    entries: want_entries,
                    tombstones: want_tombstones,
                } => {
                    if (entries, tombstones) != (want_entries, want_tombstones) {
                        return Err(StoreError::Corrupt(format!(
                            "snapshot holds {entries} entries and {tombstones} tombstones, \
                             its trailer says {want_entries} and {want_tombstones}"
                        )));
                    }
                    break;
                }
                Record::Header { .. } => {
                    return Err(StoreError::Corrupt("second snapshot header".into()));
                }
            }
        }
        db.set_kv_index(&mut txn, kv_index)?;
        db.set_applied(&mut txn, &meta.last_log_id)?;
        db.set_membership(&mut txn, &meta.last_membership)?;
        txn.commit()?;

        self.publish(tmp, meta, true)?;
        self.remove_parts()
    }

    /// Renames `tmp` over the current snapshot if it is at least as new (or `force`),
    /// else removes it.
    fn publish(&self, tmp: &Path, meta: &Meta, force: bool) -> Result<(), StoreError> {
        let mut state = self.lock();
        let newer = state
            .meta
            .as_ref()
            .is_none_or(|cur| cur.last_log_id <= meta.last_log_id);
        if force || newer {
            fs::rename(tmp, self.dir.join(CURRENT))?;
            File::open(&self.dir)?.sync_all()?;
            state.meta = Some(meta.clone());
        } else {
            fs::remove_file(tmp)?;
        }
        Ok(())
    }
}

fn snapshot_id(index: Option<u64>) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    match index {
        Some(i) => format!("{i}-{millis}"),
        None => format!("none-{millis}"),
    }
}

fn write_record(out: &mut impl Write, record: &Record) -> Result<(), StoreError> {
    let bytes = postcard::to_allocvec(record)?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Corrupt("snapshot record too large".into()))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&bytes)?;
    Ok(())
}

fn read_record(input: &mut impl Read) -> Result<Record, StoreError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(StoreError::Corrupt(format!(
            "snapshot frame of {len} bytes"
        )));
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    Ok(postcard::from_bytes(&buf)?)
}

/// Reads the magic and the header record.
fn read_header(input: &mut impl Read) -> Result<(Meta, u64), StoreError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StoreError::Corrupt("not a snapshot file".into()));
    }
    match read_record(input)? {
        Record::Header { meta, kv_index } => Ok((meta, kv_index)),
        _ => Err(StoreError::Corrupt(
            "snapshot does not start with a header".into(),
        )),
    }
}
