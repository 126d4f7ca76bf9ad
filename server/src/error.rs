//! One error table: code → HTTP status → stable snake_case name. Bodies are `{code, message}`.
//! A 5xx says "internal error"; the detail goes to the log only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human message (never data values).
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

/// Every code the API can return, with its status. Clients switch on `code`.
pub const CODES: &[(&str, u16)] = &[
    ("bad_request", 400),
    ("malformed_body", 400),
    ("wrong_content_type", 415),
    ("body_too_large", 413),
    ("unauthenticated", 401),
    ("unknown_session", 401),
    ("session_expired", 401),
    ("malformed_token", 401),
    ("unknown_issuer", 401),
    ("bad_signature", 401),
    ("expired", 401),
    ("not_yet_valid", 401),
    ("wrong_audience", 401),
    ("issuer_not_allowed", 403),
    ("revoked", 401),
    ("revocation_unavailable", 503),
    ("missing_pop", 401),
    ("bad_pop", 401),
    ("replayed_nonce", 401),
    ("unknown_nonce", 401),
    ("forbidden_class", 403),
    ("unknown_class", 404),
    ("scope_kind", 403),
    ("scope_k", 403),
    ("scope_radius", 403),
    ("budget_exhausted", 429),
    ("too_many_sessions", 429),
    ("limit_blocks", 403),
    ("repeated_block", 400),
    ("limit_payloads", 403),
    ("unreachable_record", 404),
    ("too_many_queries", 429),
    ("unknown_index", 404),
    ("unknown_query", 404),
    ("unknown_block", 404),
    ("unknown_record", 404),
    ("overloaded", 429),
    ("timeout", 408),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("internal", 500),
];

impl ApiError {
    /// An error with a code from [`CODES`].
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let status = CODES
            .iter()
            .find(|(c, _)| *c == code)
            .and_then(|(_, s)| StatusCode::from_u16(*s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 500: the detail is logged, the client sees "internal error".
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        ApiError::new("internal", "internal error")
    }
}

impl From<blindkd_engine::Error> for ApiError {
    fn from(e: blindkd_engine::Error) -> Self {
        use blindkd_engine::Error as E;
        match e {
            E::Denied { code, detail } | E::Token { code, detail } => {
                if CODES.iter().any(|(c, _)| *c == code) {
                    ApiError::new(code, detail)
                } else {
                    ApiError::new("bad_request", detail)
                }
            }
            E::Malformed { .. } | E::InvalidInput(_) | E::Crypto(_) => {
                ApiError::new("malformed_body", e.to_string())
            }
            E::LimitExceeded(d) => ApiError::new("body_too_large", d),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code,
            message: &self.message,
        })
        .unwrap_or_default();
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_map_to_their_status() {
        let mut seen = std::collections::HashSet::new();
        for (c, s) in CODES {
            assert!(seen.insert(c), "duplicate {c}");
            assert!(
                c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c}"
            );
            assert_eq!(ApiError::new(c, "").status.as_u16(), *s);
        }
    }
}
