//! Wire format of the streams.
//!
//! - RPC, on a bidirectional stream: the caller writes one frame (u32 big-endian length,
//!   then the request) and finishes; the callee answers with one frame whose first byte is
//!   a status ([`STATUS_OK`] then the reply body, or [`STATUS_ERROR`] then a UTF-8
//!   message) and finishes.
//! - A datagram too large for a QUIC datagram, on a unidirectional stream: the type byte
//!   [`STREAM_DATAGRAM`], then the payload up to the end of the stream.
//!
//! Frames above the receiver's limit are refused from their length prefix alone: the
//! receiver stops and resets the stream with [`code::FRAME_TOO_LARGE`] and allocates
//! nothing. Bodies are read as they arrive, never pre-allocated from the prefix.

use bytes::Bytes;
use quinn::{ReadExactError, ReadToEndError, RecvStream, SendStream, WriteError};

use super::RpcError;

/// Application error codes for stream resets and connection closes.
pub(super) mod code {
    use quinn::VarInt;

    /// Connection closed normally (shutdown, disconnect).
    pub(crate) const CLOSED: VarInt = VarInt::from_u32(0);
    /// Connection closed: the peer certificate carries no usable identity.
    pub(crate) const BAD_IDENTITY: VarInt = VarInt::from_u32(1);
    /// Stream refused: the frame length exceeds the receiver's limit.
    pub(crate) const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(0x10);
    /// Stream refused: malformed frame.
    pub(crate) const PROTOCOL: VarInt = VarInt::from_u32(0x11);
    /// Stream abandoned: the receiver is shutting down.
    pub(crate) const SHUTTING_DOWN: VarInt = VarInt::from_u32(0x12);
    /// Stream refused: unknown stream type byte.
    pub(crate) const UNKNOWN_STREAM: VarInt = VarInt::from_u32(0x13);
}

/// Type byte of a unidirectional stream carrying one datagram.
pub(super) const STREAM_DATAGRAM: u8 = 1;
/// Reply status: the body follows.
pub(super) const STATUS_OK: u8 = 0;
/// Reply status: a UTF-8 error message follows.
pub(super) const STATUS_ERROR: u8 = 1;
/// Longest remote error message sent back, in bytes.
const MAX_ERROR_MESSAGE: usize = 4096;

/// Why a frame could not be read.
#[derive(Debug)]
pub(super) enum ReadFrameError {
    /// The length prefix (or the stream) exceeds the limit.
    TooLarge { len: usize },
    /// The stream does not hold exactly one well-formed frame.
    Malformed(&'static str),
    /// The stream or the connection failed.
    Read(quinn::ReadError),
}

/// Reads one length-prefixed frame that ends the stream, refusing lengths above `max`.
pub(super) async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Bytes, ReadFrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(_) => ReadFrameError::Malformed("truncated length prefix"),
        ReadExactError::ReadError(e) => ReadFrameError::Read(e),
    })?;
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > max {
        return Err(ReadFrameError::TooLarge { len });
    }
    let body = recv.read_to_end(len).await.map_err(|e| match e {
        ReadToEndError::TooLong => ReadFrameError::Malformed("data after the frame"),
        ReadToEndError::Read(e) => ReadFrameError::Read(e),
    })?;
    if body.len() != len {
        return Err(ReadFrameError::Malformed("truncated frame"));
    }
    Ok(Bytes::from(body))
}

/// Writes one length-prefixed frame made of `parts` and finishes the stream.
/// The caller has checked the total length against the limit (and `u32`).
pub(super) async fn write_frame(
    send: &mut SendStream,
    parts: Vec<Bytes>,
) -> Result<(), WriteError> {
    let len: usize = parts.iter().map(Bytes::len).sum();
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut chunks = Vec::with_capacity(parts.len() + 1);
    chunks.push(Bytes::copy_from_slice(&len.to_be_bytes()));
    chunks.extend(parts);
    write_and_finish(send, &mut chunks).await
}

/// Writes `chunks` and finishes the stream.
async fn write_and_finish(send: &mut SendStream, chunks: &mut [Bytes]) -> Result<(), WriteError> {
    send.write_all_chunks(chunks).await?;
    // Only fails if the stream was already finished or reset: nothing left to do then.
    let _ = send.finish();
    Ok(())
}

/// The reply frame's parts for a handler result, within the frame limit `max`.
pub(super) fn reply_parts(result: Result<Bytes, RpcError>, max: usize) -> Vec<Bytes> {
    match result {
        Ok(body) if body.len() < max => vec![Bytes::from_static(&[STATUS_OK]), body],
        Ok(body) => error_parts(
            &format!(
                "reply of {} bytes exceeds the frame limit of {max} bytes",
                body.len()
            ),
            max,
        ),
        Err(error) => error_parts(&error.0, max),
    }
}

fn error_parts(message: &str, max: usize) -> Vec<Bytes> {
    let limit = MAX_ERROR_MESSAGE.min(max.saturating_sub(1));
    let mut end = message.len().min(limit);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    vec![
        Bytes::from_static(&[STATUS_ERROR]),
        Bytes::copy_from_slice(&message.as_bytes()[..end]),
    ]
}

/// Splits a reply frame into the body or the remote error message.
pub(super) fn parse_reply(frame: Bytes) -> Result<Result<Bytes, String>, &'static str> {
    match frame.first() {
        Some(&STATUS_OK) => Ok(Ok(frame.slice(1..))),
        Some(&STATUS_ERROR) => Ok(Err(String::from_utf8_lossy(&frame[1..]).into_owned())),
        Some(_) => Err("unknown reply status"),
        None => Err("empty reply frame"),
    }
}

/// Why a datagram stream could not be read.
#[derive(Debug)]
pub(super) enum ReadUniError {
    TooLarge,
    UnknownType(u8),
    Malformed,
    Read,
}

/// Reads a unidirectional datagram stream: the type byte, then at most `max` bytes.
pub(super) async fn read_uni_datagram(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Bytes, ReadUniError> {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(_) => ReadUniError::Malformed,
        ReadExactError::ReadError(_) => ReadUniError::Read,
    })?;
    if kind[0] != STREAM_DATAGRAM {
        return Err(ReadUniError::UnknownType(kind[0]));
    }
    match recv.read_to_end(max).await {
        Ok(payload) => Ok(Bytes::from(payload)),
        Err(ReadToEndError::TooLong) => Err(ReadUniError::TooLarge),
        Err(ReadToEndError::Read(_)) => Err(ReadUniError::Read),
    }
}

/// Sends `payload` as one datagram on a new unidirectional stream.
pub(super) async fn write_uni_datagram(
    conn: &quinn::Connection,
    payload: Bytes,
) -> Result<(), StreamSendError> {
    let mut send = conn.open_uni().await.map_err(StreamSendError::Connection)?;
    let mut chunks = [Bytes::from_static(&[STREAM_DATAGRAM]), payload];
    write_and_finish(&mut send, &mut chunks)
        .await
        .map_err(StreamSendError::Write)
}

#[derive(Debug)]
pub(super) enum StreamSendError {
    Connection(quinn::ConnectionError),
    Write(WriteError),
}
