//! `PUT /v1/txn`: up to 64 KV operations applied atomically, in Consul's shapes.
//!
//! A transaction of reads only is answered from local state in the read mode asked for
//! (as Consul does); any write makes it one Raft log entry. Success is 200 with
//! `{"Results": [...], "Errors": null}`; a rolled-back transaction is 409 with
//! `{"Results": null, "Errors": [{"OpIndex", "What"}]}`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use consensus::{MAX_TXN_OPS, MAX_VALUE_LEN, Request, Response as RaftResponse, TxnOp, TxnOutcome};
use serde_json::{Map, Value, json as object};

use super::error::ApiError;
use super::kv::KvJson;
use super::params::Params;
use super::{ApiState, json, prepare_read, read_body, read_error, read_headers};

/// Largest accepted request body (64 values of 512 KiB would not fit one entry anyway;
/// the transaction's own size limit is checked after parsing).
const MAX_TXN_BODY: usize = 4 * 1024 * 1024;

/// `PUT /v1/txn`.
pub async fn txn(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let raft = state.raft()?;
    let body = read_body(body, MAX_TXN_BODY, |limit| {
        format!("Request body too large, max size: {limit} bytes")
    })
    .await?;
    let ops = parse_ops(&body)?;

    if !ops.iter().any(TxnOp::is_write) {
        prepare_read(raft, params.consistency()?).await?;
        let outcome = raft.kv().read_txn(&ops).map_err(read_error)?;
        let index = raft.kv().kv_index().map_err(read_error)?;
        let mut response = answer(outcome);
        response.headers_mut().extend(read_headers(raft, index));
        return Ok(response);
    }
    let outcome = super::propose(raft, Request::Txn(ops)).await?;
    match outcome.response {
        RaftResponse::Txn(outcome) => Ok(answer(outcome)),
        RaftResponse::Rejected(reason) => Err(ApiError::internal(format!(
            "the state machine rejected the transaction: {reason}"
        ))),
        other => Err(ApiError::internal(format!(
            "unexpected answer from the state machine: {other:?}"
        ))),
    }
}

fn answer(outcome: TxnOutcome) -> Response {
    match outcome {
        TxnOutcome::Committed(results) => {
            let results: Vec<Value> = results
                .iter()
                .map(|r| {
                    let mut entry = KvJson::from(&r.entry);
                    if r.value_omitted {
                        entry.value = None;
                    }
                    object!({ "KV": entry })
                })
                .collect();
            json(&object!({ "Results": results, "Errors": null }))
        }
        TxnOutcome::RolledBack(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| object!({ "OpIndex": e.op_index, "What": e.what }))
                .collect();
            let mut response = json(&object!({ "Results": null, "Errors": errors }));
            *response.status_mut() = StatusCode::CONFLICT;
            response
        }
    }
}

/// The value of `name` in `object`, whatever the letter case of the field (Consul
/// matches request fields case-insensitively).
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("Failed to parse body: {}", message.into()))
}

/// Parses Consul's transaction body into operations; any malformed operation refuses
/// the whole request before anything is proposed.
fn parse_ops(body: &[u8]) -> Result<Vec<TxnOp>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(bad("expected a JSON array of operations"));
    };
    if items.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_op(i, item))
        .collect()
}

fn parse_op(i: usize, item: &Value) -> Result<TxnOp, ApiError> {
    let kv = item
        .as_object()
        .and_then(|o| field(o, "KV"))
        .and_then(Value::as_object)
        .ok_or_else(|| bad(format!("operation {i} is not a KV operation")))?;
    let text = |name: &str| -> Result<String, ApiError> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("operation {i}: {name} must be a string"))),
        }
    };
    let number = |name: &str| -> Result<u64, ApiError> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| bad(format!("operation {i}: {name} must be an unsigned integer"))),
        }
    };
    let verb = text("Verb")?;
    let key = text("Key")?;
    let value = || -> Result<Vec<u8>, ApiError> {
        let encoded = text("Value")?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| bad(format!("operation {i}: Value is not base64: {e}")))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {key:?} is too large ({} > {MAX_VALUE_LEN} bytes)",
                    value.len()
                ),
            ));
        }
        Ok(value)
    };
    let op = match verb.as_str() {
        "set" => TxnOp::Set {
            value: value()?,
            flags: number("Flags")?,
            key,
        },
        "cas" => TxnOp::Cas {
            value: value()?,
            flags: number("Flags")?,
            index: number("Index")?,
            key,
        },
        "get" => TxnOp::Get { key },
        "get-tree" => TxnOp::GetTree { prefix: key },
        "check-index" => TxnOp::CheckIndex {
            index: number("Index")?,
            key,
        },
        "check-not-exists" => TxnOp::CheckNotExists { key },
        "delete" => TxnOp::Delete { key },
        "delete-tree" => TxnOp::DeleteTree { prefix: key },
        "delete-cas" => TxnOp::DeleteCas {
            index: number("Index")?,
            key,
        },
        "lock" | "unlock" | "check-session" => {
            return Err(bad(format!(
                "operation {i}: verb {verb:?} needs sessions, which this agent does not have"
            )));
        }
        other => return Err(bad(format!("operation {i}: unknown KV verb {other:?}"))),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_with_any_letter_case() {
        let body = br#"[
            {"KV": {"Verb": "set", "Key": "a", "Value": "aGk=", "Flags": 3}},
            {"kv": {"verb": "cas", "key": "b", "value": null, "index": 7}},
            {"KV": {"Verb": "get-tree", "Key": "p/"}},
            {"KV": {"VERB": "delete-cas", "KEY": "c", "INDEX": 2}}
        ]"#;
        let ops = parse_ops(body).unwrap();
        assert_eq!(
            ops,
            vec![
                TxnOp::Set {
                    key: "a".into(),
                    value: b"hi".to_vec(),
                    flags: 3
                },
                TxnOp::Cas {
                    key: "b".into(),
                    value: vec![],
                    flags: 0,
                    index: 7
                },
                TxnOp::GetTree {
                    prefix: "p/".into()
                },
                TxnOp::DeleteCas {
                    key: "c".into(),
                    index: 2
                },
            ]
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b"{}"[..],
            b"not json",
            br#"[{"KV": {"Verb": "explode", "Key": "a"}}]"#,
            br#"[{"KV": {"Verb": "set", "Key": "a", "Value": "!!"}}]"#,
            br#"[{"KV": {"Verb": "set", "Key": 5}}]"#,
            br#"[{"KV": {"Verb": "cas", "Key": "a", "Index": -1}}]"#,
            br#"[{"Node": {}}]"#,
        ] {
            let error = parse_ops(body).unwrap_err();
            assert_eq!(
                error.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let many = format!(
            "[{}]",
            vec![r#"{"KV":{"Verb":"get","Key":"a"}}"#; 65].join(",")
        );
        assert_eq!(
            parse_ops(many.as_bytes()).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
