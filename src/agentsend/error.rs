//! Classification of AgentSend failures into what the caller should do about them.

use std::time::{Duration, SystemTime};

use thiserror::Error;

/// Longest API error message kept (bodies can be huge or hostile).
pub const MAX_MESSAGE_LEN: usize = 300;

/// Longest wait honoured from a `Retry-After` header (10 minutes). Larger values, numbers too
/// big to represent and HTTP dates far in the future are clamped to it, so a hostile or broken
/// answer can neither overflow time arithmetic nor park an account for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A failed AgentSend call, classified by what retrying can achieve.
///
/// Messages never contain the API key: they come from the response body (truncated) or from
/// transport errors, which carry no headers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401/403: the API key is missing, wrong or revoked. Fix the credentials Secret or the
    /// operator's default key; retrying soon will not help.
    #[error(
        "AgentSend refused the API key (HTTP {status}): {message}; check the credentials Secret or the operator's default key"
    )]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// 404: the inbox does not exist in this account (or belongs to another account).
    #[error("AgentSend inbox not found (HTTP 404): {message}")]
    NotFound {
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// 400/409/422: the request itself is refused; change the spec before retrying.
    #[error("AgentSend rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// 429: rate limited. Wait at least `retry_after` when given.
    #[error("AgentSend rate limit reached (HTTP 429){}: {message}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64().ceil() as u64)).unwrap_or_default())]
    RateLimited {
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// 5xx, timeouts, connection resets: retry with backoff.
    #[error("AgentSend is unavailable{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        /// HTTP status, when there was an answer.
        status: Option<u16>,
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// A 2xx answer whose body is not what the API documents. Retried like a transient error,
    /// since a proxy or a partial answer is the usual cause.
    #[error("AgentSend sent a response that could not be read: {message}")]
    InvalidResponse {
        /// The API's (or the transport's) message, truncated.
        message: String,
    },

    /// The client could not be set up (bad base URL, TLS setup); fix the operator's flags.
    #[error("AgentSend client misconfigured: {message}")]
    Config {
        /// The API's (or the transport's) message, truncated.
        message: String,
    },
}

impl ApiError {
    /// The same error with every occurrence of `secret` in its message replaced, so that an
    /// API that echoes the key it was sent (in an error body) cannot carry it into status,
    /// events or logs.
    pub fn redacted(mut self, secret: &str) -> ApiError {
        if secret.is_empty() {
            return self;
        }
        let message = match &mut self {
            ApiError::Unauthorized { message, .. }
            | ApiError::NotFound { message }
            | ApiError::Rejected { message, .. }
            | ApiError::RateLimited { message, .. }
            | ApiError::Transient { message, .. }
            | ApiError::InvalidResponse { message }
            | ApiError::Config { message } => message,
        };
        if message.contains(secret) {
            *message = message.replace(secret, "[redacted]");
        }
        self
    }

    /// Short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Rejected { .. } => "rejected",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Transient { .. } => "transient",
            ApiError::InvalidResponse { .. } => "invalid_response",
            ApiError::Config { .. } => "config",
        }
    }

    /// Whether the same idempotent request may succeed if simply sent again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Transient { .. } | ApiError::InvalidResponse { .. }
        )
    }

    /// The API's own message, when there is one.
    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized { message, .. }
            | ApiError::NotFound { message }
            | ApiError::Rejected { message, .. }
            | ApiError::RateLimited { message, .. }
            | ApiError::Transient { message, .. }
            | ApiError::InvalidResponse { message }
            | ApiError::Config { message } => message,
        }
    }

    /// Classify a non-success HTTP answer. `retry_after` is clamped to [`MAX_RETRY_AFTER`].
    pub fn from_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ApiError {
        let message = error_message(body);
        let retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER));
        match status {
            401 | 403 => ApiError::Unauthorized { status, message },
            404 => ApiError::NotFound { message },
            429 => ApiError::RateLimited {
                retry_after,
                message,
            },
            400 | 409 | 422 => ApiError::Rejected { status, message },
            s if s >= 500 => ApiError::Transient {
                status: Some(s),
                message,
            },
            // Other 4xx (405, 408, 413...) are not documented: a request timeout is worth
            // retrying, the rest is a rejection of the request as sent.
            408 => ApiError::Transient {
                status: Some(408),
                message,
            },
            s => ApiError::Rejected { status: s, message },
        }
    }
}

/// Parse `Retry-After` as RFC 9110 defines it: delay-seconds (digits only) or an HTTP-date
/// (relative to `now`). The result is at most [`MAX_RETRY_AFTER`]; a date in the past is
/// zero. Anything else — fractions, exponents, signs, `NaN`, words — is not a delay: `None`
/// (the caller's normal backoff applies, and the client counts the invalid header), so one
/// malformed answer cannot pause an account for the whole cap.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still a (very long) valid delay: capped.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Extract a human message from an error body: JSON `message`/`error`/`detail` if present,
/// else the text itself; whitespace collapsed and truncated.
pub fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let pick = |k: &str| match v.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string),
                _ => None,
            };
            match (pick("error"), pick("message").or_else(|| pick("detail"))) {
                (Some(e), Some(m)) if e != m => Some(format!("{e}: {m}")),
                (_, Some(m)) => Some(m),
                (Some(e), None) => Some(e),
                (None, None) => None,
            }
        });
    let raw = from_json.unwrap_or_else(|| text.into_owned());
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let msg = truncate(&collapsed, MAX_MESSAGE_LEN);
    if msg.is_empty() {
        "(no message)".to_string()
    } else {
        msg
    }
}

/// Truncate on a char boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let c = |s| ApiError::from_status(s, None, b"{\"error\":\"x\"}").reason();
        let table = [
            (401, "unauthorized"),
            (403, "unauthorized"),
            (404, "not_found"),
            (400, "rejected"),
            (409, "rejected"),
            (422, "rejected"),
            (405, "rejected"),
            (429, "rate_limited"),
            (408, "transient"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
        ];
        for (status, reason) in table {
            assert_eq!(c(status), reason, "HTTP {status}");
        }
    }

    #[test]
    fn transient_only_for_retryable() {
        assert!(ApiError::from_status(503, None, b"").is_transient());
        assert!(!ApiError::from_status(409, None, b"").is_transient());
        assert!(!ApiError::from_status(401, None, b"").is_transient());
        assert!(!ApiError::from_status(429, None, b"").is_transient());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110: delay-seconds is digits only.
        assert_eq!(parse_retry_after("1.5", now), None);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    /// A valid value over the cap is capped; anything RFC 9110 does not allow is not a delay
    /// (the review's `1e300` paused a whole account for the 10-minute cap).
    fn hostile_retry_after_is_clamped_or_ignored() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Some(MAX_RETRY_AFTER);
        let cases = [
            ("99999999999999999999", max),
            ("18446744073709551615", max),
            ("1e300", None),
            ("1e400", None),
            ("1e20", None),
            ("601", max),
            ("+5", None),
            ("5 ", Some(Duration::from_secs(5))),
            ("5s", None),
            ("0.000000001", None),
            ("-1e400", None),
            ("-0.5", None),
            ("NaN", None),
            ("inf", None),
            ("1e", None),
            ("", None),
            ("\u{1F4A5}", None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", max),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
        let e = ApiError::from_status(429, Some(Duration::MAX), b"");
        assert!(
            matches!(e, ApiError::RateLimited { retry_after: Some(d), .. } if d == MAX_RETRY_AFTER)
        );
        assert!(e.to_string().contains("retry after 600s"), "{e}");
    }

    #[test]
    fn an_echoed_key_is_redacted() {
        let key = "sk_live_secret_0123";
        let body = format!(r#"{{"error":"unauthorized","message":"key {key} is not valid"}}"#);
        let e = ApiError::from_status(401, None, body.as_bytes()).redacted(key);
        let text = e.to_string();
        assert!(!text.contains(key), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        let quiet = ApiError::from_status(500, None, b"oops").redacted(key);
        assert!(quiet.to_string().contains("oops"));
    }

    #[test]
    fn messages_from_json_or_text() {
        assert_eq!(
            error_message(br#"{"error":"conflict","message":"address taken"}"#),
            "conflict: address taken"
        );
        assert_eq!(error_message(br#"{"message":"bad"}"#), "bad");
        assert_eq!(
            error_message(br#"{"error":{"message":"nested"}}"#),
            "nested"
        );
        assert_eq!(error_message(b"plain\n  text"), "plain text");
        assert_eq!(error_message(b""), "(no message)");
        let long = "é".repeat(1000);
        let m = error_message(long.as_bytes());
        assert!(m.len() <= MAX_MESSAGE_LEN + 3, "{}", m.len());
        assert!(m.ends_with('…'));
        // Not valid UTF-8: still a message, no panic.
        assert!(!error_message(&[0xff, 0xfe, b'a']).is_empty());
    }

    #[test]
    fn rate_limited_display_mentions_delay() {
        let e = ApiError::from_status(429, Some(Duration::from_secs(12)), b"slow down");
        assert!(e.to_string().contains("retry after 12s"), "{e}");
    }
}
