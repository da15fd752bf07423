//! `agent kv put|get|delete`.

use std::io::{Read, Write};

use base64::Engine;

use crate::cli::KvCommand;
use crate::client::{ApiClient, KvPair};

use super::CommandError;

/// Runs one KV command against the agent at `client`; `stdin` feeds `put KEY -`.
pub async fn run(
    client: &ApiClient,
    command: KvCommand,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match command {
        KvCommand::Put {
            key,
            value,
            cas,
            modify_index,
            flags,
        } => {
            let value = match value.as_deref() {
                Some("-") => {
                    let mut buf = Vec::new();
                    stdin.read_to_end(&mut buf)?;
                    buf
                }
                Some(text) => text.as_bytes().to_vec(),
                None => Vec::new(),
            };
            let cas = if cas { modify_index } else { None };
            if client.kv_put(&key, value, flags, cas).await? {
                writeln!(out, "Success! Data written to: {key}")?;
                Ok(())
            } else {
                Err(CommandError::Failed(format!(
                    "Error! Did not write to {key}: CAS failed"
                )))
            }
        }
        KvCommand::Get {
            key,
            recurse,
            keys,
            detailed,
        } => {
            if keys {
                for name in client.kv_keys(&key, Some("/")).await? {
                    writeln!(out, "{name}")?;
                }
                return Ok(());
            }
            let entries = client.kv_get(&key, recurse).await?;
            if entries.is_empty() {
                if recurse {
                    return Ok(());
                }
                return Err(CommandError::Failed(format!(
                    "Error! No key exists at: {key}"
                )));
            }
            for (i, entry) in entries.iter().enumerate() {
                if detailed {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    write_detailed(entry, out)?;
                } else if recurse {
                    out.write_all(entry.key.as_bytes())?;
                    out.write_all(b":")?;
                    out.write_all(&entry.value_bytes()?)?;
                    writeln!(out)?;
                } else {
                    out.write_all(&entry.value_bytes()?)?;
                    writeln!(out)?;
                }
            }
            Ok(())
        }
        KvCommand::Export { prefix } => {
            let entries = client.kv_get(&prefix, true).await?;
            let export: Vec<ExportEntry> = entries
                .into_iter()
                .map(|e| ExportEntry {
                    key: e.key,
                    flags: e.flags,
                    value: e.value.unwrap_or_default(),
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &export)
                .map_err(|e| CommandError::Failed(format!("Error! encoding: {e}")))?;
            writeln!(out)?;
            Ok(())
        }
        KvCommand::Import { file } => {
            let mut text = Vec::new();
            if file == "-" {
                stdin.read_to_end(&mut text)?;
            } else {
                text = std::fs::read(&file)
                    .map_err(|e| CommandError::Failed(format!("Error! reading {file}: {e}")))?;
            }
            let entries: Vec<ExportEntry> = serde_json::from_slice(&text).map_err(|e| {
                CommandError::Failed(format!("Error! {file} is not a KV export: {e}"))
            })?;
            // Check every value before writing any, so bad input writes nothing.
            let mut decoded = Vec::with_capacity(entries.len());
            for entry in &entries {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(&entry.value)
                    .map_err(|e| {
                        CommandError::Failed(format!(
                            "Error! the value of {:?} is not base64: {e}",
                            entry.key
                        ))
                    })?;
                decoded.push(value);
            }
            for (entry, value) in entries.iter().zip(decoded) {
                client.kv_put(&entry.key, value, entry.flags, None).await?;
                writeln!(out, "Imported: {}", entry.key)?;
            }
            Ok(())
        }
        KvCommand::Delete { key, recurse } => {
            client.kv_delete(&key, recurse).await?;
            if recurse {
                writeln!(out, "Success! Deleted keys with prefix: {key}")?;
            } else {
                writeln!(out, "Success! Deleted key: {key}")?;
            }
            Ok(())
        }
    }
}

/// One key of `kv export`, in Consul's format.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ExportEntry {
    key: String,
    #[serde(default)]
    flags: u64,
    /// Standard base64.
    #[serde(default)]
    value: String,
}

/// The fields of one entry, aligned, as `consul kv get -detailed` prints them.
fn write_detailed(entry: &KvPair, out: &mut dyn Write) -> Result<(), CommandError> {
    let value = entry.value_bytes()?;
    let rows = [
        ("CreateIndex", entry.create_index.to_string()),
        ("Flags", entry.flags.to_string()),
        ("Key", entry.key.clone()),
        ("LockIndex", entry.lock_index.to_string()),
        ("ModifyIndex", entry.modify_index.to_string()),
        (
            "Session",
            entry.session.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Value", String::from_utf8_lossy(&value).into_owned()),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:<17}{value}")?;
    }
    Ok(())
}
