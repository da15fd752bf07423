//! `agent kv put|get|delete`.

use std::io::{Read, Write};

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
