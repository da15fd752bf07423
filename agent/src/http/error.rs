//! Errors of the HTTP API: a status and a plain-text reason, as Consul answers them.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The plain-text reason sent as the body.
    pub message: String,
    /// This server found it does not lead (any more): a read may be asked elsewhere.
    pub not_leader: bool,
}

/// Marks a response given because this server does not lead (see
/// [`ApiError::not_leader`]), for the forwarding middleware.
#[derive(Debug, Clone, Copy)]
pub struct NotLeader;

impl ApiError {
    /// An error with a status and a reason.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            not_leader: false,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500: what Consul answers when the cluster cannot serve (no leader, no path).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 500 from a server that found it does not lead (any more).
    pub fn not_leader(message: impl Into<String>) -> ApiError {
        ApiError {
            not_leader: true,
            ..ApiError::internal(message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response();
        if self.not_leader {
            response.extensions_mut().insert(NotLeader);
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}
