//! `agent event`: fire a user event through the local agent.

use std::io::{Read, Write};

use events::user::EventFilter;

use crate::cli::EventArgs;
use crate::client::ApiClient;

use super::CommandError;

/// Most bytes `agent event --name N -` reads from stdin. The agent's own limit on name
/// plus payload is far lower; this bound only keeps the command from reading without end.
pub const MAX_STDIN_PAYLOAD: usize = 64 * 1024;

/// Fires the event and prints its ID as Consul does (`Event ID: <id>`); `stdin` feeds a
/// payload of `-`.
pub async fn fire(
    client: &ApiClient,
    args: &EventArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let payload = match args.payload.as_deref() {
        Some("-") => read_bounded(stdin, MAX_STDIN_PAYLOAD)?,
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let filter = EventFilter {
        node: args.node.clone(),
        service: args.service.clone(),
        tag: args.tag.clone(),
    };
    let event = client
        .fire_event(&args.name, payload, &filter, args.dc.as_deref())
        .await?;
    writeln!(out, "Event ID: {}", event.id)?;
    Ok(())
}

/// Reads all of `input`, refusing more than `limit` bytes (a whole number of KiB).
fn read_bounded(input: &mut dyn Read, limit: usize) -> Result<Vec<u8>, CommandError> {
    let mut buf = Vec::new();
    input.take(limit as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > limit {
        return Err(CommandError::Failed(format!(
            "Error! The payload on stdin is larger than {} KiB; an event's payload must be small",
            limit / 1024
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_read_up_to_the_limit_and_no_further() {
        let exact = vec![7u8; 2048];
        assert_eq!(read_bounded(&mut exact.as_slice(), 2048).unwrap(), exact);
        let over = vec![7u8; 2049];
        let error = read_bounded(&mut over.as_slice(), 2048).unwrap_err();
        assert!(error.to_string().contains("larger than 2 KiB"), "{error}");
        assert!(read_bounded(&mut [].as_slice(), 2048).unwrap().is_empty());
    }
}
