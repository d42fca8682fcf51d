//! Why bytes are not valid RESP.

/// Input that is not RESP or breaks a [`super::RespLimits`] bound. Every
/// variant is bad input from the remote end, never a bug: a server answers
/// with [`RespError::redis_message`] and closes the connection (as Redis
/// does on a protocol error), a client drops the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("command of {count} arguments exceeds arguments_max {max}")]
    ArgumentsTooMany { count: i64, max: usize },
    #[error("bulk string of {length} bytes exceeds bulk_length_max {max}")]
    BulkTooLong { length: i64, max: usize },
    #[error("inline command longer than inline_length_max {max} bytes")]
    InlineTooLong { max: usize },
    #[error("command or reply of at least {length} bytes exceeds command_bytes_max {max}")]
    CommandTooLarge { length: usize, max: usize },
    #[error("aggregate reply nested deeper than depth_max {max}")]
    TooDeep { max: usize },
    #[error("invalid {what} length line {line:?}")]
    BadLength { what: &'static str, line: String },
    #[error("type line longer than {max} bytes without a line end")]
    LineTooLong { max: usize },
    #[error("expected '$' (a bulk string) in a command, got {found:?}")]
    ExpectedBulk { found: char },
    #[error("a bulk string of {length} bytes is not followed by CRLF")]
    MissingCrlf { length: usize },
    #[error("unbalanced quotes in an inline command")]
    UnbalancedQuotes,
    #[error("unknown reply type byte {found:?}")]
    UnknownType { found: char },
    #[error("bad {what} reply {line:?}")]
    BadValue { what: &'static str, line: String },
}

impl RespError {
    /// The text of the error reply a Redis server sends for this input (with
    /// the `ERR` code), so clients and their tests see familiar messages.
    pub fn redis_message(&self) -> String {
        match self {
            RespError::ArgumentsTooMany { .. } => "ERR Protocol error: invalid multibulk length".into(),
            RespError::BulkTooLong { .. } => "ERR Protocol error: invalid bulk length".into(),
            RespError::InlineTooLong { .. } => "ERR Protocol error: too big inline request".into(),
            RespError::UnbalancedQuotes => "ERR Protocol error: unbalanced quotes in request".into(),
            RespError::ExpectedBulk { found } => format!("ERR Protocol error: expected '$', got '{found}'"),
            RespError::BadLength { what: "bulk", .. } => "ERR Protocol error: invalid bulk length".into(),
            RespError::BadLength { .. } => "ERR Protocol error: invalid multibulk length".into(),
            other => format!("ERR Protocol error: {other}"),
        }
    }
}

/// A line's bytes for an error message: lossy UTF-8, at most 32 bytes.
pub(crate) fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned()
}
