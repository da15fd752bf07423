//! The commands other than `run`: each turns parsed arguments into work and writes its
//! output to the writer it is given, so that `main` alone owns stdout and exit codes.

pub mod event;
pub mod info;
pub mod kv;
pub mod members;
pub mod operator;
pub mod tls;
pub mod watch;

use thiserror::Error;

/// An error a command reports on stderr (exit code 1).
#[derive(Debug, Error)]
pub enum CommandError {
    /// The command did what it could and reports why it failed, in Consul's words.
    #[error("{0}")]
    Failed(String),
    /// Talking to the agent failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// Certificate creation failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Reading input or writing output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
