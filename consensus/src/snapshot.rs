//! Snapshot files: their format, building them from the state machine, installing them
//! into it, and keeping the current one on disk.
//!
//! # Format
//! An 8-byte magic, then frames of `u32` little-endian length + postcard [`Record`]: one
//! `Header` (snapshot meta and the KV table index), a `ReapedFloor` record if tombstones
//! were ever reaped (omitted otherwise, so such snapshots read as before), the KV entries,
//! the tombstones, the catalog's rows with their count (both omitted when the catalog is
//! empty), and an `End` record with the counts, so a truncated file is detected.
//!
//! # Files
//! `<data>/snapshots/current.snap` is the current snapshot. New files are written under a
//! temporary name, fsynced, and renamed over it (then the directory is fsynced), so a
//! crash leaves either the old or the new snapshot. Snapshots being received are
//! `recv-N.part`. Leftover temporary files are removed at startup.
//!
//! Snapshot data is a `tokio::fs::File`, so a snapshot is never held in memory whole.
//!
//! # Durable snapshot watermark
//! The last log id of the current snapshot file is published on a watch channel
//! ([`Durability`]) once the file is durable. A snapshot file is only ever published
//! after the state machine has durably applied everything it covers, so the log store
//! uses this watermark to decide how far it may physically purge: see
//! [`crate::log_store`].

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::tables::CatalogTable;
use crate::error::StoreError;
use crate::lmdb::{create_dir_durable, sync_dir};
use crate::sm_db::{OnceRecord, SmDb};
use crate::types::{KvEntry, NodeId, Response, ServerNode};

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
    Header {
        meta: Meta,
        kv_index: u64,
    },
    Entry(KvEntry),
    Tombstone {
        key: String,
        index: u64,
    },
    End {
        entries: u64,
        tombstones: u64,
    },
    ReapedFloor(u64),
    /// One row of a catalog table, as stored.
    CatalogRow {
        table: CatalogTable,
        key: String,
        value: Vec<u8>,
    },
    /// How many catalog rows the snapshot holds; written after them.
    CatalogRows(u64),
    /// A remembered once-only write.
    Once {
        id: u128,
        at_ms: u64,
        response: Response,
    },
}

struct Current {
    meta: Option<Meta>,
    next_file: u64,
}

/// What the state machine has made durable, as far as the log store needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Durability {
    /// Index of the last entry covered by the durable current snapshot; the state machine
    /// has durably applied at least that far.
    pub(crate) snapshot: Option<u64>,
    /// Index of the last entry of a snapshot whose installation failed.
    pub(crate) failed_install: Option<u64>,
}

impl Durability {
    /// For a log store that is not paired with a state machine: everything is durable.
    #[cfg(test)]
    pub(crate) fn unbounded() -> watch::Receiver<Durability> {
        let (tx, rx) = watch::channel(Durability {
            snapshot: Some(u64::MAX),
            failed_install: None,
        });
        // Keep the channel open: a closed channel means the state machine is gone.
        std::mem::forget(tx);
        rx
    }
}

/// The snapshot directory of one node.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// Largest snapshot file accepted for installation.
    max_bytes: u64,
    state: Mutex<Current>,
    durability: watch::Sender<Durability>,
}

impl SnapshotDir {
    /// Opens `dir`, removing leftover temporary files and reading the current snapshot's
    /// header. An unreadable current snapshot is removed: the state machine is durable on
    /// its own and openraft builds a new snapshot when it needs one. Snapshots larger
    /// than `max_bytes` are refused for installation.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        create_dir_durable(dir)?;
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
        let durability = watch::Sender::new(Durability {
            snapshot: meta.as_ref().and_then(|m| m.last_log_id).map(|id| id.index),
            failed_install: None,
        });
        Ok(SnapshotDir {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(Current { meta, next_file: 0 }),
            durability,
        })
    }

    /// Follows what the state machine has made durable.
    pub(crate) fn durability(&self) -> watch::Receiver<Durability> {
        self.durability.subscribe()
    }

    /// Meta of the current snapshot.
    pub(crate) fn current_meta(&self) -> Option<Meta> {
        self.lock().meta.clone()
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
        let reaped_floor = db.reaped_floor(&txn)?;

        let mut out = BufWriter::new(File::create(tmp)?);
        out.write_all(MAGIC)?;
        write_record(
            &mut out,
            &Record::Header {
                meta: meta.clone(),
                kv_index,
            },
        )?;
        if reaped_floor > 0 {
            write_record(&mut out, &Record::ReapedFloor(reaped_floor))?;
        }
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
        let mut catalog_rows = 0u64;
        for table in CatalogTable::ALL {
            db.catalog_scan(&txn, table, "", &mut |key, value| {
                catalog_rows += 1;
                write_record(
                    &mut out,
                    &Record::CatalogRow {
                        table,
                        key: key.to_owned(),
                        value: value.to_vec(),
                    },
                )?;
                Ok(std::ops::ControlFlow::Continue(()))
            })?;
        }
        if catalog_rows > 0 {
            write_record(&mut out, &Record::CatalogRows(catalog_rows))?;
        }
        db.for_each_once(&txn, &mut |id, record| {
            write_record(
                &mut out,
                &Record::Once {
                    id,
                    at_ms: record.at_ms,
                    response: record.response,
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
    /// The header is checked and the size bounded before anything is copied. The data is
    /// then copied into a file of this directory, so the snapshot stays available
    /// whatever `data` refers to. A failure is reported on the durability channel, so a
    /// log store waiting for this snapshot gives up.
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
            if let Some(index) = meta.last_log_id.map(|id| id.index) {
                self.durability.send_modify(|d| {
                    d.failed_install = d.failed_install.max(Some(index));
                });
            }
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
        let len = data.metadata()?.len();
        if len > self.max_bytes {
            return Err(StoreError::Corrupt(format!(
                "snapshot of {len} bytes exceeds the limit of {} bytes",
                self.max_bytes
            )));
        }
        data.seek(SeekFrom::Start(0))?;
        check_header(&mut BufReader::new(&mut *data), meta)?;

        data.seek(SeekFrom::Start(0))?;
        let mut copy = File::create(tmp)?;
        let copied = io::copy(&mut (&mut *data).take(len), &mut copy)?;
        if copied != len {
            return Err(StoreError::Corrupt(format!(
                "snapshot shrank from {len} to {copied} bytes while being copied"
            )));
        }
        copy.sync_all()?;
        drop(copy);

        load_into(db, &mut BufReader::new(File::open(tmp)?), meta)?;
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
            sync_dir(&self.dir)?;
            state.meta = Some(meta.clone());
            let index = meta.last_log_id.map(|id| id.index);
            self.durability
                .send_modify(|d| d.snapshot = d.snapshot.max(index));
        } else {
            fs::remove_file(tmp)?;
        }
        Ok(())
    }
}

/// Checks the magic and that the header matches `meta`.
fn check_header(input: &mut impl Read, meta: &Meta) -> Result<u64, StoreError> {
    let (header, kv_index) = read_header(input)?;
    if header.last_log_id != meta.last_log_id || header.last_membership != meta.last_membership {
        return Err(StoreError::Corrupt(format!(
            "snapshot data is {header} but was announced as {meta}"
        )));
    }
    Ok(kv_index)
}

/// Replaces the state machine's state with the snapshot read from `input`, in one write
/// transaction that also records the snapshot as installed. Changes nothing on error.
pub(crate) fn load_into(db: &SmDb, input: &mut impl Read, meta: &Meta) -> Result<(), StoreError> {
    let kv_index = check_header(input, meta)?;
    let mut txn = db.env.write_txn()?;
    db.clear(&mut txn)?;
    let (mut entries, mut tombstones) = (0u64, 0u64);
    let (mut catalog_rows, mut want_catalog_rows) = (0u64, 0u64);
    loop {
        match read_record(input)? {
            Record::ReapedFloor(floor) => db.set_reaped_floor(&mut txn, floor)?,
            Record::Entry(e) => {
                db.put_entry(&mut txn, &e)?;
                entries += 1;
            }
            Record::Tombstone { key, index } => {
                db.put_tombstone(&mut txn, &key, index)?;
                tombstones += 1;
            }
            Record::CatalogRow { table, key, value } => {
                db.catalog_put(&mut txn, table, &key, &value)?;
                catalog_rows += 1;
            }
            Record::CatalogRows(n) => want_catalog_rows = n,
            Record::Once {
                id,
                at_ms,
                response,
            } => db.once_put(&mut txn, id, &OnceRecord { at_ms, response })?,
            Record::End {
                entries: want_entries,
                tombstones: want_tombstones,
            } => {
                if catalog_rows != want_catalog_rows {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot holds {catalog_rows} catalog rows, it announced \
                         {want_catalog_rows}"
                    )));
                }
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
    db.set_installed_snapshot(&mut txn, &meta.last_log_id)?;
    txn.commit()?;
    Ok(())
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
