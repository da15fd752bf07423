//! `agent operator raft list-peers`.

use std::io::Write;

use crate::cli::{OperatorCommand, OperatorRaftCommand};
use crate::client::ApiClient;

use super::CommandError;
use super::members::write_table;

/// Runs an operator command.
pub async fn run(
    client: &ApiClient,
    command: OperatorCommand,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match command {
        OperatorCommand::Raft {
            command: OperatorRaftCommand::ListPeers { stale },
        } => {
            let path = if stale {
                "/v1/operator/raft/configuration?stale"
            } else {
                "/v1/operator/raft/configuration"
            };
            let config = client.get_json(path).await?;
            let servers = config["Servers"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = servers
                .iter()
                .map(|s| {
                    let text = |field: &str| s[field].as_str().unwrap_or_default().to_string();
                    let state = if s["Leader"].as_bool() == Some(true) {
                        "leader"
                    } else {
                        "follower"
                    };
                    vec![
                        text("Node"),
                        text("ID"),
                        text("Address"),
                        state.to_string(),
                        (s["Voter"].as_bool() == Some(true)).to_string(),
                        text("ProtocolVersion"),
                    ]
                })
                .collect();
            write_table(
                &["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
                &rows,
                out,
            )?;
            Ok(())
        }
    }
}
