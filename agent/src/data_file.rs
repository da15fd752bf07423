//! Small files of the data dir, written whole and read with a bound.
//!
//! [`write_atomic`] writes to `<name>.tmp` beside the file, fsyncs it, renames it over
//! the old file and fsyncs the directory, so a crash leaves either the old or the new
//! file, never a mix. Callers that write the same file from several tasks serialize
//! their writes themselves.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temporary(path);
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        // Makes the rename durable; some file systems cannot sync a directory.
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The content of `path`, or `None` when there is no such file. A file larger than
/// `limit` bytes is an error (checked while reading, not only from its size).
pub fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(Some(bytes))
}

/// `<path>.tmp`.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_and_replace_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read_bounded(&path, 10).unwrap(), None);
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap().unwrap(), b"second");
        assert!(!dir.path().join("state.tmp").exists());
        let e = read_bounded(&path, 3).unwrap_err();
        assert!(e.to_string().contains("larger than 3 bytes"), "{e}");
    }
}
