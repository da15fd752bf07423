//! `agent info`: the local agent's view of itself.

use std::io::Write;

use crate::client::ApiClient;

use super::CommandError;

/// Prints `/v1/agent/self` as sections of `key = value` lines.
pub async fn run(client: &ApiClient, out: &mut dyn Write) -> Result<(), CommandError> {
    let me = client.get_json("/v1/agent/self").await?;
    for section in ["Config", "Stats"] {
        let Some(object) = me.get(section).and_then(|v| v.as_object()) else {
            continue;
        };
        writeln!(out, "{}:", section.to_lowercase())?;
        write_object(object, 1, out)?;
    }
    Ok(())
}

fn write_object(
    object: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let pad = "\t".repeat(depth);
    for (key, value) in object {
        match value {
            serde_json::Value::Object(inner) => {
                writeln!(out, "{pad}{key}:")?;
                write_object(inner, depth + 1, out)?;
            }
            serde_json::Value::String(text) => writeln!(out, "{pad}{key} = {text}")?,
            serde_json::Value::Null => {}
            other => writeln!(out, "{pad}{key} = {other}")?,
        }
    }
    Ok(())
}
