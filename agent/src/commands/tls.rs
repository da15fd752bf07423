//! `agent tls ca create` and `agent tls cert create`.

use std::io::Write;

use crate::cli::{TlsCaCommand, TlsCertCommand, TlsCommand};
use crate::tls::{self, CertRequest, Role};

use super::CommandError;

/// Runs a `tls` command; `host_name` is the default node name.
pub fn run(command: TlsCommand, host_name: &str, out: &mut dyn Write) -> Result<(), CommandError> {
    match command {
        TlsCommand::Ca {
            command: TlsCaCommand::Create { dir, days },
        } => {
            let files = tls::create_ca(&dir, days)?;
            writeln!(out, "==> Saved {}", files.cert.display())?;
            writeln!(out, "==> Saved {}", files.key.display())?;
        }
        TlsCommand::Cert {
            command:
                TlsCertCommand::Create {
                    server,
                    client: _,
                    dc,
                    node,
                    out: name,
                    dir,
                    days,
                },
        } => {
            let request = CertRequest {
                role: if server { Role::Server } else { Role::Client },
                dc,
                node: node.unwrap_or_else(|| host_name.to_string()),
                out: name,
                days,
            };
            let files = tls::create_cert(&dir, &request)?;
            writeln!(out, "==> Using CA in {}", dir.display())?;
            writeln!(out, "==> Saved {}", files.cert.display())?;
            writeln!(out, "==> Saved {}", files.key.display())?;
        }
    }
    Ok(())
}
