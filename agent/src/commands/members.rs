//! `agent join`, `agent leave`, `agent members`, `agent force-leave`.

use std::io::Write;

use crate::cli::{ForceLeaveArgs, JoinArgs, MembersArgs};
use crate::client::{ApiClient, MemberJson, encode_key};

use super::CommandError;

/// Asks the local agent to join through each address; succeeds if any one answered.
pub async fn join(
    client: &ApiClient,
    args: &JoinArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let suffix = if args.wan { "?wan" } else { "" };
    let mut joined = 0;
    let mut last_error = None;
    for addr in &args.addrs {
        match client
            .put_empty(&format!("/v1/agent/join/{}{suffix}", encode_key(addr)))
            .await
        {
            Ok(_) => joined += 1,
            Err(e) => last_error = Some(format!("Error joining address '{addr}': {e}")),
        }
    }
    if joined == 0 {
        return Err(CommandError::Failed(
            last_error.unwrap_or_else(|| "Error! No address given".into()),
        ));
    }
    writeln!(
        out,
        "Successfully joined cluster by contacting {joined} nodes."
    )?;
    Ok(())
}

/// Asks the local agent to leave gracefully; it stops once the leave has spread.
pub async fn leave(client: &ApiClient, out: &mut dyn Write) -> Result<(), CommandError> {
    client.put_empty("/v1/agent/leave").await?;
    writeln!(out, "Graceful leave complete")?;
    Ok(())
}

/// Asks the local agent to move a failed member to left.
pub async fn force_leave(
    client: &ApiClient,
    args: &ForceLeaveArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    client
        .put_empty(&format!("/v1/agent/force-leave/{}", encode_key(&args.node)))
        .await?;
    writeln!(out, "Force-left {}", args.node)?;
    Ok(())
}

/// Prints the members as an aligned table.
pub async fn members(
    client: &ApiClient,
    args: &MembersArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let filter = match &args.status {
        Some(pattern) => Some(
            regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| CommandError::Failed(format!("Error! Invalid --status: {e}")))?,
        ),
        None => None,
    };
    let mut members = client.members(args.wan).await?;
    members.retain(|m| {
        filter
            .as_ref()
            .is_none_or(|re| re.is_match(m.status_name()))
    });
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Vec<String>> = if args.detailed {
        members.iter().map(detailed_row).collect()
    } else {
        members.iter().map(row).collect()
    };
    let header: &[&str] = if args.detailed {
        &["Node", "Address", "Status", "Tags"]
    } else {
        &["Node", "Address", "Status", "Type", "DC", "Build"]
    };
    write_table(header, &rows, out)?;
    Ok(())
}

fn tag(member: &MemberJson, name: &str) -> String {
    member.tags.get(name).cloned().unwrap_or_default()
}

fn address(member: &MemberJson) -> String {
    if member.addr.contains(':') {
        format!("[{}]:{}", member.addr, member.port)
    } else {
        format!("{}:{}", member.addr, member.port)
    }
}

fn row(member: &MemberJson) -> Vec<String> {
    vec![
        member.name.clone(),
        address(member),
        member.status_name().to_string(),
        tag(member, "role"),
        tag(member, "dc"),
        tag(member, "build"),
    ]
}

fn detailed_row(member: &MemberJson) -> Vec<String> {
    let tags: Vec<String> = member
        .tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vec![
        member.name.clone(),
        address(member),
        member.status_name().to_string(),
        tags.join(","),
    ]
}

/// Writes `rows` under `header` with columns padded to their widest cell.
pub(crate) fn write_table(
    header: &[&str],
    rows: &[Vec<String>],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>, out: &mut dyn Write| -> std::io::Result<()> {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(header.to_vec(), out)?;
    for row in rows {
        line(row.iter().map(String::as_str).collect(), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a-long-name".to_string(), "1".to_string(), "x".to_string()],
            vec![
                "b".to_string(),
                "127.0.0.1:8301".to_string(),
                "".to_string(),
            ],
        ];
        write_table(&["Node", "Address", "Status"], &rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Node         Address         Status\n\
             a-long-name  1               x\n\
             b            127.0.0.1:8301\n"
        );
    }
}
