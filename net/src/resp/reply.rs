//! Replies: the server's encoder (RESP2 and RESP3) and the client's
//! streaming parser (both versions).

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{length_line, put_decimal};
use super::error::{excerpt, RespError};
use super::{find_newline, parse_integer, RespLimits};

/// The protocol version a connection speaks: RESP2 until the client's
/// `HELLO 3` switches it to RESP3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    #[default]
    Resp2,
    Resp3,
}

/// A reply. RESP3 types are encoded for RESP2 clients as Redis encodes
/// them: null as `$-1`, a map as a flat array of keys and values, a set or
/// push as an array, a double, big number or verbatim string as a bulk
/// string, a boolean as `:1` or `:0`.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`: a short status. `\r` and `\n` are sent as spaces.
    Simple(Bytes),
    /// `-ERR ...`: the first word is the error code. `\r` and `\n` are sent
    /// as spaces. A RESP3 blob error (`!`) parses to this too.
    Error(Bytes),
    Integer(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value (`GET` of a missing key). RESP2 null arrays (`*-1`) parse
    /// to this too.
    Null,
    Array(Vec<Reply>),
    /// RESP3 `%`: key-value pairs in order (`HELLO`'s answer).
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~`.
    Set(Vec<Reply>),
    /// RESP3 `,`: `inf`, `-inf` and `nan` included.
    Double(f64),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `=`: text with a three-letter format (`txt`, `mkd`), as `INFO`
    /// answers.
    Verbatim {
        format: [u8; 3],
        text: Bytes,
    },
    /// RESP3 `(`: an integer of any size, as its decimal digits.
    BigNumber(Bytes),
    /// RESP3 `>`: an out-of-band message (pub/sub).
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple(Bytes::from_static(b"OK"))
    }

    /// An error reply; `message` starts with its code (`ERR`, `WRONGTYPE`).
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error(Bytes::from(message.into()))
    }

    /// Appends the reply in `version`'s encoding.
    pub fn encode(&self, version: Version, out: &mut BytesMut) {
        let resp3 = version == Version::Resp3;
        match self {
            Reply::Simple(text) => line(out, b'+', text),
            Reply::Error(text) => line(out, b'-', text),
            Reply::Integer(value) => {
                out.put_u8(b':');
                put_decimal(out, *value);
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(bytes) => bulk(out, b'$', bytes),
            Reply::Null if resp3 => out.put_slice(b"_\r\n"),
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, version),
            Reply::Set(items) => aggregate(out, if resp3 { b'~' } else { b'*' }, items, version),
            Reply::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, version),
            Reply::Map(pairs) => {
                let (kind, count) = if resp3 { (b'%', pairs.len()) } else { (b'*', 2 * pairs.len()) };
                header(out, kind, count);
                for (key, value) in pairs {
                    key.encode(version, out);
                    value.encode(version, out);
                }
            }
            Reply::Double(value) if resp3 => line(out, b',', format_double(*value).as_bytes()),
            Reply::Double(value) => bulk(out, b'$', format_double(*value).as_bytes()),
            Reply::Boolean(value) if resp3 => out.put_slice(if *value { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Boolean(value) => out.put_slice(if *value { b":1\r\n" } else { b":0\r\n" }),
            Reply::Verbatim { format, text } if resp3 => {
                header(out, b'=', text.len() + 4);
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim { text, .. } => bulk(out, b'$', text),
            Reply::BigNumber(digits) if resp3 => line(out, b'(', digits),
            Reply::BigNumber(digits) => bulk(out, b'$', digits),
        }
    }

    /// The reply's encoding as a new buffer.
    pub fn to_bytes(&self, version: Version) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(version, &mut out);
        out.freeze()
    }
}

fn header(out: &mut BytesMut, kind: u8, count: usize) {
    out.put_u8(kind);
    put_decimal(out, count as i64);
    out.put_slice(b"\r\n");
}

/// A one-line reply; line breaks in `text` would end the line early and be
/// read as the start of another reply, so they are sent as spaces.
fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    if text.iter().any(|&byte| byte == b'\r' || byte == b'\n') {
        out.extend(text.iter().map(|&byte| if byte == b'\r' || byte == b'\n' { b' ' } else { byte }));
    } else {
        out.put_slice(text);
    }
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    header(out, kind, bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

fn aggregate(out: &mut BytesMut, kind: u8, items: &[Reply], version: Version) {
    header(out, kind, items.len());
    for item in items {
        item.encode(version, out);
    }
}

/// A double as RESP3 writes it: `inf`, `-inf`, `nan`, or the shortest
/// decimal that reads back to the same value (with an exponent when plain
/// digits would be long).
fn format_double(value: f64) -> String {
    if value.is_nan() {
        "nan".into()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        let plain = format!("{value}");
        if plain.len() > 24 {
            format!("{value:e}")
        } else {
            plain
        }
    }
}

/// Splits replies out of a client connection's receive buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyParser {
    limits: RespLimits,
}

/// A reply located in the buffer: bulk contents as ranges, built into a
/// [`Reply`] of slices once the whole reply has arrived.
enum Located {
    Simple(usize, usize),
    Error(usize, usize),
    Integer(i64),
    Bulk(usize, usize),
    Null,
    Array(Vec<Located>),
    Map(Vec<(Located, Located)>),
    Set(Vec<Located>),
    Double(f64),
    Boolean(bool),
    Verbatim([u8; 3], usize, usize),
    BigNumber(usize, usize),
    Push(Vec<Located>),
}

impl ReplyParser {
    pub fn new(limits: RespLimits) -> ReplyParser {
        ReplyParser { limits }
    }

    /// The next complete reply at the start of `buf`, removed from it;
    /// `Ok(None)` if it has not fully arrived (`buf` is then unchanged).
    /// Bulk strings are slices of the received bytes.
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<Reply>, RespError> {
        let Some((located, length)) = self.locate(buf, 0, 0)? else { return Ok(None) };
        let bytes = buf.split_to(length).freeze();
        Ok(Some(build(&bytes, located)))
    }

    /// The reply starting at `start`, and where it ends; `None` if
    /// incomplete.
    fn locate(&self, buf: &[u8], start: usize, depth: usize) -> Result<Option<(Located, usize)>, RespError> {
        let Some(&kind) = buf.get(start) else { return Ok(None) };
        let limits = &self.limits;
        match kind {
            b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                let Some(newline) = find_newline(buf, start) else {
                    return self.incomplete(buf.len());
                };
                let end = newline + 1;
                self.check_size(end)?;
                let what = reply_type_name(kind);
                let content_end = newline
                    .checked_sub(1)
                    .filter(|&cr| cr > start && buf[cr] == b'\r')
                    .ok_or_else(|| RespError::BadValue { what, line: excerpt(&buf[start..newline]) })?;
                let content = &buf[start + 1..content_end];
                let bad = || RespError::BadValue { what, line: excerpt(content) };
                let located = match kind {
                    b'+' => Located::Simple(start + 1, content_end),
                    b'-' => Located::Error(start + 1, content_end),
                    b':' => Located::Integer(parse_integer(content).ok_or_else(bad)?),
                    b',' => Located::Double(parse_double(content).ok_or_else(bad)?),
                    b'#' => match content {
                        b"t" => Located::Boolean(true),
                        b"f" => Located::Boolean(false),
                        _ => return Err(bad()),
                    },
                    b'(' => {
                        let digits = content.strip_prefix(b"-").unwrap_or(content);
                        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                            return Err(bad());
                        }
                        Located::BigNumber(start + 1, content_end)
                    }
                    _ if content.is_empty() => Located::Null,
                    _ => return Err(bad()),
                };
                Ok(Some((located, end)))
            }
            b'$' | b'!' | b'=' => {
                let what = reply_type_name(kind);
                let Some((length, data)) = length_line(buf, start, what)? else { return Ok(None) };
                if kind == b'$' && length == -1 {
                    return Ok(Some((Located::Null, data)));
                }
                if length < 0 || (kind == b'=' && length < 4) {
                    return Err(RespError::BadLength { what, line: length.to_string() });
                }
                if length as u64 > limits.bulk_length_max as u64 {
                    return Err(RespError::BulkTooLong { length, max: limits.bulk_length_max });
                }
                let end = data + length as usize;
                self.check_size(end + 2)?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RespError::MissingCrlf { length: length as usize });
                }
                let located = match kind {
                    b'$' => Located::Bulk(data, end),
                    b'!' => Located::Error(data, end),
                    _ => {
                        if buf[data + 3] != b':' {
                            return Err(RespError::BadValue { what, line: excerpt(&buf[data..end]) });
                        }
                        let format = [buf[data], buf[data + 1], buf[data + 2]];
                        Located::Verbatim(format, data + 4, end)
                    }
                };
                Ok(Some((located, end + 2)))
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let what = reply_type_name(kind);
                let Some((count, mut position)) = length_line(buf, start, what)? else { return Ok(None) };
                if kind == b'*' && count == -1 {
                    return Ok(Some((Located::Null, position)));
                }
                if count < 0 {
                    return Err(RespError::BadLength { what, line: count.to_string() });
                }
                if count as u64 > limits.arguments_max as u64 {
                    return Err(RespError::ArgumentsTooMany { count, max: limits.arguments_max });
                }
                if depth >= limits.depth_max {
                    return Err(RespError::TooDeep { max: limits.depth_max });
                }
                let count = count as usize;
                let elements = if matches!(kind, b'%' | b'|') { 2 * count } else { count };
                let mut items = Vec::with_capacity(elements.min(16));
                for _ in 0..elements {
                    let Some((item, end)) = self.locate(buf, position, depth + 1)? else { return Ok(None) };
                    items.push(item);
                    position = end;
                }
                let located = match kind {
                    b'*' => Located::Array(items),
                    b'~' => Located::Set(items),
                    b'>' => Located::Push(items),
                    b'%' => Located::Map(pairs(items)),
                    _ => {
                        // Attributes describe the reply that follows; this
                        // client has no use for them and returns the reply.
                        return self.locate(buf, position, depth + 1);
                    }
                };
                Ok(Some((located, position)))
            }
            other => Err(RespError::UnknownType { found: char::from(other) }),
        }
    }

    /// Incomplete, unless the bytes already buffered pass the bound.
    fn incomplete<T>(&self, buffered: usize) -> Result<Option<T>, RespError> {
        self.check_size(buffered)?;
        Ok(None)
    }

    fn check_size(&self, length: usize) -> Result<(), RespError> {
        if length > self.limits.command_bytes_max {
            return Err(RespError::CommandTooLarge { length, max: self.limits.command_bytes_max });
        }
        Ok(())
    }
}

fn pairs(items: Vec<Located>) -> Vec<(Located, Located)> {
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    pairs
}

fn build(bytes: &Bytes, located: Located) -> Reply {
    let all = |items: Vec<Located>| items.into_iter().map(|item| build(bytes, item)).collect();
    match located {
        Located::Simple(start, end) => Reply::Simple(bytes.slice(start..end)),
        Located::Error(start, end) => Reply::Error(bytes.slice(start..end)),
        Located::Integer(value) => Reply::Integer(value),
        Located::Bulk(start, end) => Reply::Bulk(bytes.slice(start..end)),
        Located::Null => Reply::Null,
        Located::Array(items) => Reply::Array(all(items)),
        Located::Set(items) => Reply::Set(all(items)),
        Located::Push(items) => Reply::Push(all(items)),
        Located::Map(pairs) => {
            Reply::Map(pairs.into_iter().map(|(key, value)| (build(bytes, key), build(bytes, value))).collect())
        }
        Located::Double(value) => Reply::Double(value),
        Located::Boolean(value) => Reply::Boolean(value),
        Located::Verbatim(format, start, end) => Reply::Verbatim { format, text: bytes.slice(start..end) },
        Located::BigNumber(start, end) => Reply::BigNumber(bytes.slice(start..end)),
    }
}

fn reply_type_name(kind: u8) -> &'static str {
    match kind {
        b'+' => "simple string",
        b'-' => "error",
        b':' => "integer",
        b',' => "double",
        b'#' => "boolean",
        b'(' => "big number",
        b'_' => "null",
        b'$' => "bulk",
        b'!' => "blob error",
        b'=' => "verbatim",
        b'*' => "array",
        b'~' => "set",
        b'>' => "push",
        b'%' => "map",
        _ => "attribute",
    }
}

/// A RESP3 double's text: decimal with an optional exponent, `inf`, `-inf`
/// or `nan`.
fn parse_double(text: &[u8]) -> Option<f64> {
    match text {
        b"inf" | b"+inf" => return Some(f64::INFINITY),
        b"-inf" => return Some(f64::NEG_INFINITY),
        b"nan" | b"-nan" => return Some(f64::NAN),
        _ => {}
    }
    // Rust's parser also takes words such as "infinity": only digits, a
    // sign, a point and an exponent are RESP.
    if text.is_empty() || !text.iter().all(|&byte| byte.is_ascii_digit() || b"+-.eE".contains(&byte)) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(input: &[u8]) -> Result<Option<Reply>, RespError> {
        ReplyParser::default().next(&mut BytesMut::from(input))
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        let map = Reply::Map(vec![
            (Reply::Bulk(Bytes::from_static(b"proto")), Reply::Integer(3)),
            (Reply::Bulk(Bytes::from_static(b"ok")), Reply::Boolean(true)),
        ]);
        assert_eq!(&map.to_bytes(Version::Resp3)[..], b"%2\r\n$5\r\nproto\r\n:3\r\n$2\r\nok\r\n#t\r\n");
        assert_eq!(&map.to_bytes(Version::Resp2)[..], b"*4\r\n$5\r\nproto\r\n:3\r\n$2\r\nok\r\n:1\r\n");
        assert_eq!(&Reply::Null.to_bytes(Version::Resp2)[..], b"$-1\r\n");
        assert_eq!(&Reply::Null.to_bytes(Version::Resp3)[..], b"_\r\n");
        assert_eq!(&Reply::Double(1.5).to_bytes(Version::Resp3)[..], b",1.5\r\n");
        assert_eq!(&Reply::Double(1.5).to_bytes(Version::Resp2)[..], b"$3\r\n1.5\r\n");
        assert_eq!(&Reply::Double(f64::NEG_INFINITY).to_bytes(Version::Resp3)[..], b",-inf\r\n");
        let info = Reply::Verbatim { format: *b"txt", text: Bytes::from_static(b"a:1") };
        assert_eq!(&info.to_bytes(Version::Resp3)[..], b"=7\r\ntxt:a:1\r\n");
        assert_eq!(&info.to_bytes(Version::Resp2)[..], b"$3\r\na:1\r\n");
        assert_eq!(&Reply::Integer(-42).to_bytes(Version::Resp2)[..], b":-42\r\n");
        assert_eq!(&Reply::Integer(i64::MIN).to_bytes(Version::Resp2)[..], b":-9223372036854775808\r\n");
    }

    #[test]
    fn line_breaks_in_simple_strings_and_errors_become_spaces() {
        let error = Reply::error("ERR bad\r\ninput");
        assert_eq!(&error.to_bytes(Version::Resp2)[..], b"-ERR bad  input\r\n");
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(parse_one(b"+OK\r\n"), Ok(Some(Reply::ok())));
        assert_eq!(parse_one(b"$-1\r\n"), Ok(Some(Reply::Null)));
        assert_eq!(parse_one(b"*-1\r\n"), Ok(Some(Reply::Null)));
        assert_eq!(parse_one(b"!3\r\nERR\r\n"), Ok(Some(Reply::error("ERR"))));
        assert_eq!(parse_one(b"(-123456789012345678901234567890\r\n").unwrap().unwrap(), {
            Reply::BigNumber(Bytes::from_static(b"-123456789012345678901234567890"))
        });
        assert_eq!(
            parse_one(b">2\r\n+a\r\n:1\r\n"),
            Ok(Some(Reply::Push(vec![Reply::Simple("a".into()), Reply::Integer(1)])))
        );
        // An attribute is skipped; the reply it annotates is returned.
        assert_eq!(parse_one(b"|1\r\n+key\r\n+value\r\n:7\r\n"), Ok(Some(Reply::Integer(7))));
        assert_eq!(parse_one(b",1e300\r\n"), Ok(Some(Reply::Double(1e300))));
        assert!(matches!(parse_one(b",infinity\r\n"), Err(RespError::BadValue { what: "double", .. })));
        assert!(matches!(parse_one(b"?\r\n"), Err(RespError::UnknownType { found: '?' })));
        assert!(matches!(parse_one(b"=2\r\nab\r\n"), Err(RespError::BadLength { .. })));
        assert!(matches!(parse_one(b":12\n"), Err(RespError::BadValue { what: "integer", .. })));
        assert!(matches!(parse_one(b"#x\r\n"), Err(RespError::BadValue { what: "boolean", .. })));
    }

    #[test]
    fn nesting_is_bounded_without_recursing_further() {
        let limits = RespLimits { depth_max: 4, ..Default::default() };
        let deep = b"*1\r\n".repeat(10);
        assert_eq!(ReplyParser::new(limits).next(&mut BytesMut::from(&deep[..])), Err(RespError::TooDeep { max: 4 }));
        let shallow = [b"*1\r\n".repeat(3), b":1\r\n".to_vec()].concat();
        assert!(ReplyParser::new(limits).next(&mut BytesMut::from(&shallow[..])).unwrap().is_some());
    }

    #[test]
    fn bulk_replies_are_slices_and_partial_replies_wait() {
        let mut buf = BytesMut::from(&b"$5\r\nhello\r\n+OK\r\n$3\r\nab"[..]);
        let base = buf.as_ptr() as usize;
        let parser = ReplyParser::default();
        let Some(Reply::Bulk(hello)) = parser.next(&mut buf).unwrap() else { panic!("a bulk reply") };
        assert_eq!((&hello[..], hello.as_ptr() as usize), (&b"hello"[..], base + 4));
        assert_eq!(parser.next(&mut buf), Ok(Some(Reply::ok())));
        assert_eq!(parser.next(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"$3\r\nab");
    }
}
