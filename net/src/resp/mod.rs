//! RESP, the Redis serialization protocol: the codec of the node's Redis
//! front door, so that `redis-cli`, `redis-benchmark` and Redis client
//! libraries can use the key-value state machine, and of the bench's RESP
//! client, which drives `redis-server` and the node alike.
//!
//! This module is the protocol alone, with no node logic:
//!
//! - server side: [`CommandParser`] splits client commands out of a receive
//!   buffer, both RESP arrays of bulk strings (what client libraries and
//!   `redis-benchmark` send) and inline commands (what `redis-cli` in a pipe
//!   and telnet send); [`Reply`] encodes answers in RESP2 or RESP3
//!   ([`Version`]), downgrading RESP3 types for RESP2 clients as Redis does;
//! - client side: [`encode_command`] writes a command as an array of bulk
//!   strings and [`ReplyParser`] reads RESP2 and RESP3 replies.
//!
//! Both parsers are streaming and never block on a partial input: given the
//! bytes received so far they return one complete item, `Ok(None)` when more
//! bytes are needed (consuming nothing), or a typed [`RespError`]. Many
//! commands in one buffer (pipelining) come out one call at a time, and a
//! command split across reads comes out once its last byte arrived.
//!
//! Zero copy: a parsed command's arguments are [`Bytes`](bytes::Bytes) slices of the
//! receive buffer (split off and frozen, not copied); only inline arguments
//! with quotes or escapes are rebuilt. Hostile input is bounded by
//! [`RespLimits`]: a claimed length is checked against its bound before
//! anything else, and no memory is ever reserved for a length a peer claims
//! (a buffer grows only with bytes that actually arrived, so a connection
//! holds at most [`RespLimits::command_bytes_max`] plus one read).

mod command;
mod error;
mod reply;

pub use command::{encode_command, encode_inline, Command, CommandParser};
pub use error::RespError;
pub use reply::{Reply, ReplyParser, Version};

/// Bounds on what a peer may send, each refused with a typed [`RespError`]
/// beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespLimits {
    /// Arguments in one command (the array's element count). Redis allows
    /// 1,048,576 to authenticated clients; no key-value command needs more
    /// than a few.
    pub arguments_max: usize,
    /// Bytes in one bulk string (an argument or a bulk reply). The node's
    /// values are at most 16 MiB; a key or value above this bound is refused
    /// before any of its bytes are buffered.
    pub bulk_length_max: usize,
    /// Bytes in one inline command line, newline included (Redis: 64 KiB).
    /// A line that grows past it without a newline is refused.
    pub inline_length_max: usize,
    /// Bytes of one whole command (or reply) as received: the most a
    /// connection must buffer to make progress.
    pub command_bytes_max: usize,
    /// Nesting depth of aggregate replies (arrays, maps, sets) the reply
    /// parser follows; deeper input is refused instead of recursing further.
    pub depth_max: usize,
}

/// [`RespLimits::arguments_max`] by default.
pub const ARGUMENTS_MAX_DEFAULT: usize = 1_024;
/// [`RespLimits::bulk_length_max`] by default: a 16 MiB value plus room.
pub const BULK_LENGTH_MAX_DEFAULT: usize = 16 * 1024 * 1024 + 64 * 1024;
/// [`RespLimits::inline_length_max`] by default, as Redis's
/// `PROTO_INLINE_MAX_SIZE`.
pub const INLINE_LENGTH_MAX_DEFAULT: usize = 64 * 1024;
/// [`RespLimits::command_bytes_max`] by default: one largest value, its key
/// and the framing.
pub const COMMAND_BYTES_MAX_DEFAULT: usize = 2 * BULK_LENGTH_MAX_DEFAULT;
/// [`RespLimits::depth_max`] by default; Redis's own replies nest at most a
/// few levels.
pub const DEPTH_MAX_DEFAULT: usize = 32;
/// The longest type line (`*1024\r\n`, `$16777216\r\n`) accepted: a sign, 20
/// digits and the line end. A longer one is refused before a newline is
/// searched for further.
pub const LENGTH_LINE_MAX: usize = 24;

impl Default for RespLimits {
    fn default() -> RespLimits {
        RespLimits {
            arguments_max: ARGUMENTS_MAX_DEFAULT,
            bulk_length_max: BULK_LENGTH_MAX_DEFAULT,
            inline_length_max: INLINE_LENGTH_MAX_DEFAULT,
            command_bytes_max: COMMAND_BYTES_MAX_DEFAULT,
            depth_max: DEPTH_MAX_DEFAULT,
        }
    }
}

/// Finds the end of the line starting at `start`: the index of its `\n`.
/// `None` if no newline was received yet.
fn find_newline(buf: &[u8], start: usize) -> Option<usize> {
    buf.get(start..)?.iter().position(|&byte| byte == b'\n').map(|offset| start + offset)
}

/// Parses a RESP length or integer line's digits (`-1`, `42`), refusing
/// anything that is not an optional minus and 1 to 19 decimal digits.
fn parse_integer(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        value = value.checked_mul(10)?.checked_add(i64::from(digit - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_strictly() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"-1"), Some(-1));
        assert_eq!(parse_integer(b"+7"), Some(7));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"9223372036854775808"), None);
        assert_eq!(parse_integer(b""), None);
        assert_eq!(parse_integer(b"-"), None);
        assert_eq!(parse_integer(b"1 2"), None);
        assert_eq!(parse_integer(b"0x10"), None);
    }
}
