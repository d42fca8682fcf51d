//! Client commands: the server's streaming parser and the client's encoders.
//!
//! A command is either a RESP array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! or an inline line (`GET k\r\n`, split on spaces with Redis's quoting
//! rules: `"..."` with `\n`, `\xHH` and other escapes, `'...'`).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{excerpt, RespError};
use super::{find_newline, parse_integer, RespLimits, LENGTH_LINE_MAX};

/// One client command: its arguments, the name first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Invariant: not empty (empty arrays and blank lines are skipped, as
    /// Redis skips them).
    pub args: Vec<Bytes>,
    /// Whether it came as an inline line rather than a RESP array.
    pub inline: bool,
}

impl Command {
    /// The command's name (its first argument).
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }

    /// Whether the name is `name`, ignoring ASCII case (`set`, `SET`).
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Splits commands out of a connection's receive buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommandParser {
    limits: RespLimits,
}

/// Where one argument's bytes are.
enum Argument {
    /// `start..end` of the command's bytes: sliced, not copied.
    Range(usize, usize),
    /// Rebuilt from a quoted inline argument.
    Owned(Vec<u8>),
}

/// What a scan of the buffer's start found.
enum Scan {
    /// Not all of the command has arrived; nothing is consumed.
    Incomplete,
    /// An empty array or blank line of this many bytes, to drop.
    Skip(usize),
    /// A command of `length` bytes.
    Complete { length: usize, args: Vec<Argument>, inline: bool },
}

impl CommandParser {
    pub fn new(limits: RespLimits) -> CommandParser {
        CommandParser { limits }
    }

    pub fn limits(&self) -> &RespLimits {
        &self.limits
    }

    /// The next complete command at the start of `buf`, removed from it;
    /// `Ok(None)` if it has not fully arrived (then `buf` is unchanged but
    /// for skipped empty commands). After an error the connection's stream
    /// cannot be resynchronized and must be closed.
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<Command>, RespError> {
        loop {
            let Some(&first) = buf.first() else { return Ok(None) };
            let scan = if first == b'*' { self.scan_array(buf)? } else { self.scan_inline(buf)? };
            match scan {
                Scan::Incomplete => return Ok(None),
                Scan::Skip(length) => {
                    let _ = buf.split_to(length);
                }
                Scan::Complete { length, args, inline } => {
                    let bytes = buf.split_to(length).freeze();
                    let args = args
                        .into_iter()
                        .map(|argument| match argument {
                            Argument::Range(start, end) => bytes.slice(start..end),
                            Argument::Owned(owned) => Bytes::from(owned),
                        })
                        .collect();
                    return Ok(Some(Command { args, inline }));
                }
            }
        }
    }

    /// A RESP array of bulk strings.
    fn scan_array(&self, buf: &[u8]) -> Result<Scan, RespError> {
        let Some((count, mut position)) = length_line(buf, 0, "multibulk")? else {
            return Ok(Scan::Incomplete);
        };
        if count <= 0 {
            return Ok(Scan::Skip(position));
        }
        if count as u64 > self.limits.arguments_max as u64 {
            return Err(RespError::ArgumentsTooMany { count, max: self.limits.arguments_max });
        }
        // The claimed count is bounded above, but its memory is still only
        // taken as arguments arrive.
        let mut args = Vec::with_capacity((count as usize).min(8));
        for _ in 0..count {
            let Some(&kind) = buf.get(position) else { return Ok(Scan::Incomplete) };
            if kind != b'$' {
                return Err(RespError::ExpectedBulk { found: char::from(kind) });
            }
            let Some((length, start)) = length_line(buf, position, "bulk")? else {
                return Ok(Scan::Incomplete);
            };
            if length < 0 {
                return Err(RespError::BadLength { what: "bulk", line: length.to_string() });
            }
            if length as u64 > self.limits.bulk_length_max as u64 {
                return Err(RespError::BulkTooLong { length, max: self.limits.bulk_length_max });
            }
            let end = start + length as usize;
            if end + 2 > self.limits.command_bytes_max {
                return Err(RespError::CommandTooLarge { length: end + 2, max: self.limits.command_bytes_max });
            }
            if buf.len() < end + 2 {
                return Ok(Scan::Incomplete);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf { length: length as usize });
            }
            args.push(Argument::Range(start, end));
            position = end + 2;
        }
        Ok(Scan::Complete { length: position, args, inline: false })
    }

    /// An inline command line.
    fn scan_inline(&self, buf: &[u8]) -> Result<Scan, RespError> {
        let window = &buf[..buf.len().min(self.limits.inline_length_max)];
        let Some(newline) = find_newline(window, 0) else {
            return if buf.len() >= self.limits.inline_length_max {
                Err(RespError::InlineTooLong { max: self.limits.inline_length_max })
            } else {
                Ok(Scan::Incomplete)
            };
        };
        let args = split_inline(&buf[..newline])?;
        if args.is_empty() {
            return Ok(Scan::Skip(newline + 1));
        }
        if args.len() > self.limits.arguments_max {
            return Err(RespError::ArgumentsTooMany { count: args.len() as i64, max: self.limits.arguments_max });
        }
        Ok(Scan::Complete { length: newline + 1, args, inline: true })
    }
}

/// A `*N\r\n` or `$N\r\n` line at `start`: its number and where the next
/// line starts. The line is refused if it runs past [`LENGTH_LINE_MAX`].
pub(crate) fn length_line(buf: &[u8], start: usize, what: &'static str) -> Result<Option<(i64, usize)>, RespError> {
    let window = &buf[..buf.len().min(start + LENGTH_LINE_MAX)];
    let Some(newline) = find_newline(window, start) else {
        return if buf.len() >= start + LENGTH_LINE_MAX {
            Err(RespError::LineTooLong { max: LENGTH_LINE_MAX })
        } else {
            Ok(None)
        };
    };
    let line = &buf[start + 1..newline];
    let bad = || RespError::BadLength { what, line: excerpt(line) };
    let digits = line.strip_suffix(b"\r").ok_or_else(bad)?;
    let value = parse_integer(digits).ok_or_else(bad)?;
    Ok(Some((value, newline + 1)))
}

/// Splits an inline line as Redis's `sdssplitargs` does: whitespace
/// separates arguments; `"..."` takes `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH`
/// and `\<any>` escapes; `'...'` takes `\'`; a closing quote must end the
/// argument.
fn split_inline(line: &[u8]) -> Result<Vec<Argument>, RespError> {
    let is_space = |byte: u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut args = Vec::new();
    let mut position = 0;
    loop {
        while position < line.len() && is_space(line[position]) {
            position += 1;
        }
        if position == line.len() {
            return Ok(args);
        }
        let start = position;
        let mut owned: Option<Vec<u8>> = None;
        while let Some(&byte) = line.get(position) {
            match byte {
                b'"' | b'\'' => {
                    // From the first quote on, the argument is rebuilt.
                    let rebuilt = owned.get_or_insert_with(|| line[start..position].to_vec());
                    position = if byte == b'"' {
                        double_quoted(line, position + 1, rebuilt)?
                    } else {
                        single_quoted(line, position + 1, rebuilt)?
                    };
                    if line.get(position).is_some_and(|&next| !is_space(next)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    break;
                }
                byte if is_space(byte) || byte == 0 => break,
                byte => {
                    if let Some(rebuilt) = owned.as_mut() {
                        rebuilt.push(byte);
                    }
                    position += 1;
                }
            }
        }
        args.push(match owned {
            Some(rebuilt) => Argument::Owned(rebuilt),
            None => Argument::Range(start, position),
        });
        if line.get(position) == Some(&0) {
            // A NUL outside quotes ends the argument and is dropped (Redis,
            // reading the line as a C string, ignores the rest of the line).
            position += 1;
        }
    }
}

/// The inside of `"..."` from `position` (after the quote): appended to
/// `out`; returns the index after the closing quote.
fn double_quoted(line: &[u8], mut position: usize, out: &mut Vec<u8>) -> Result<usize, RespError> {
    let hex = |byte: u8| char::from(byte).to_digit(16).map(|digit| digit as u8);
    loop {
        match line.get(position) {
            None => return Err(RespError::UnbalancedQuotes),
            Some(b'"') => return Ok(position + 1),
            Some(b'\\') => {
                let Some(&escaped) = line.get(position + 1) else { return Err(RespError::UnbalancedQuotes) };
                if let (b'x', Some(high), Some(low)) = (
                    escaped,
                    line.get(position + 2).copied().and_then(hex),
                    line.get(position + 3).copied().and_then(hex),
                ) {
                    out.push(high << 4 | low);
                    position += 4;
                    continue;
                }
                out.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                position += 2;
            }
            Some(&byte) => {
                out.push(byte);
                position += 1;
            }
        }
    }
}

/// The inside of `'...'`: only `\'` is an escape.
fn single_quoted(line: &[u8], mut position: usize, out: &mut Vec<u8>) -> Result<usize, RespError> {
    loop {
        match (line.get(position), line.get(position + 1)) {
            (None, _) => return Err(RespError::UnbalancedQuotes),
            (Some(b'\\'), Some(b'\'')) => {
                out.push(b'\'');
                position += 2;
            }
            (Some(b'\''), _) => return Ok(position + 1),
            (Some(&byte), _) => {
                out.push(byte);
                position += 1;
            }
        }
    }
}

/// Appends `value` in decimal: the length lines' digits without going
/// through `fmt`.
pub(crate) fn put_decimal(out: &mut BytesMut, value: i64) {
    let mut digits = [0u8; 20];
    let mut position = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        position -= 1;
        digits[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[position..]);
}

/// Appends a command as a RESP array of bulk strings, as client libraries
/// send it: any bytes are safe in any argument.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    let framing: usize = args.iter().map(|arg| arg.as_ref().len() + 16).sum();
    out.reserve(framing + 16);
    out.put_u8(b'*');
    put_decimal(out, args.len() as i64);
    out.put_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        put_decimal(out, arg.len() as i64);
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Appends a command as an inline line (as typed into `redis-cli` or
/// telnet), quoting an argument that is empty or holds spaces, quotes,
/// backslashes or unprintable bytes (and a first argument starting with
/// `*`), so that the parser gives back exactly `args`.
pub fn encode_inline<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    for (index, arg) in args.iter().enumerate() {
        let arg = arg.as_ref();
        if index > 0 {
            out.put_u8(b' ');
        }
        // A line that starts with `*` is read as an array, as Redis reads it.
        let array_like = index == 0 && arg.first() == Some(&b'*');
        let plain = !arg.is_empty()
            && !array_like
            && arg.iter().all(|&byte| byte.is_ascii_graphic() && !b"\"'\\".contains(&byte));
        if plain {
            out.put_slice(arg);
            continue;
        }
        out.put_u8(b'"');
        for &byte in arg {
            match byte {
                b'\\' => out.put_slice(b"\\\\"),
                b'"' => out.put_slice(b"\\\""),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' => out.put_slice(b"\\t"),
                0x07 => out.put_slice(b"\\a"),
                0x08 => out.put_slice(b"\\b"),
                byte if byte == b' ' || byte.is_ascii_graphic() => out.put_u8(byte),
                byte => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.put_slice(&[b'\\', b'x', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
                }
            }
        }
        out.put_u8(b'"');
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], limits: RespLimits) -> Result<Vec<Vec<Vec<u8>>>, RespError> {
        let parser = CommandParser::new(limits);
        let mut buf = BytesMut::from(input);
        let mut commands = Vec::new();
        while let Some(command) = parser.next(&mut buf)? {
            commands.push(command.args.iter().map(|arg| arg.to_vec()).collect());
        }
        Ok(commands)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|arg| arg.as_bytes().to_vec()).collect()
    }

    #[test]
    fn arrays_and_inline_commands_pipeline_in_one_buffer() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nGET k\r\nPING\n*0\r\n\r\n*1\r\n$4\r\nPING\r\n";
        let commands = parse_all(input, RespLimits::default()).unwrap();
        assert_eq!(commands, vec![args(&["SET", "k", "hello"]), args(&["GET", "k"]), args(&["PING"]), args(&["PING"])]);
    }

    #[test]
    fn array_arguments_are_slices_of_the_receive_buffer() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let command = CommandParser::default().next(&mut buf).unwrap().unwrap();
        assert!(command.is("get") && !command.inline);
        // The key's bytes were not copied: they sit where the kernel put them.
        assert_eq!(command.args[1].as_ptr() as usize, base + 17);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_incomplete_command_consumes_nothing() {
        let full = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for cut in 1..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(CommandParser::default().next(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &full[..cut]);
        }
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let commands = parse_all(b"SET \"a b\" 'it\\'s' \"\\x41\\n\\\"\" ''\r\n", RespLimits::default()).unwrap();
        assert_eq!(commands, vec![vec![b"SET".to_vec(), b"a b".to_vec(), b"it's".to_vec(), b"A\n\"".to_vec(), vec![]]]);
        assert_eq!(parse_all(b"SET \"abc\r\n", RespLimits::default()), Err(RespError::UnbalancedQuotes));
        assert_eq!(parse_all(b"SET \"a\"b\r\n", RespLimits::default()), Err(RespError::UnbalancedQuotes));
        assert_eq!(parse_all(b"SET 'a\r\n", RespLimits::default()), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn bounds_are_typed_errors_before_the_bytes_arrive() {
        let limits = RespLimits { arguments_max: 4, bulk_length_max: 100, inline_length_max: 16, ..Default::default() };
        assert!(matches!(parse_all(b"*5\r\n", limits), Err(RespError::ArgumentsTooMany { count: 5, max: 4 })));
        // A huge claimed bulk is refused from its length line alone.
        assert!(matches!(
            parse_all(b"*1\r\n$999999999999\r\n", limits),
            Err(RespError::BulkTooLong { length: 999_999_999_999, .. })
        ));
        assert!(matches!(parse_all(b"GET aaaaaaaaaaaaaaaaaaaa", limits), Err(RespError::InlineTooLong { max: 16 })));
        assert!(matches!(parse_all(b"a b c d e\r\n", limits), Err(RespError::ArgumentsTooMany { count: 5, .. })));
        let small = RespLimits { command_bytes_max: 32, ..Default::default() };
        assert!(matches!(parse_all(b"*2\r\n$3\r\nSET\r\n$40\r\n", small), Err(RespError::CommandTooLarge { .. })));
        assert!(matches!(parse_all(b"*11111111111111111111111111111", limits), Err(RespError::LineTooLong { .. })));
    }

    #[test]
    fn malformed_arrays_are_typed_errors() {
        let limits = RespLimits::default();
        assert_eq!(parse_all(b"*1\r\n:5\r\n", limits), Err(RespError::ExpectedBulk { found: ':' }));
        assert!(matches!(parse_all(b"*x\r\n", limits), Err(RespError::BadLength { what: "multibulk", .. })));
        assert!(matches!(parse_all(b"*1\r\n$-1\r\n", limits), Err(RespError::BadLength { what: "bulk", .. })));
        assert!(matches!(parse_all(b"*1\r\n$1\r\nab\r\n", limits), Err(RespError::MissingCrlf { length: 1 })));
        assert!(matches!(parse_all(b"*1\n", limits), Err(RespError::BadLength { .. })));
        assert_eq!(RespError::ExpectedBulk { found: ':' }.redis_message(), "ERR Protocol error: expected '$', got ':'");
    }

    #[test]
    fn encoders_write_what_the_parser_reads() {
        let mut out = BytesMut::new();
        encode_command(&[&b"SET"[..], b"k", b""], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let mut out = BytesMut::new();
        encode_inline(&[&b"SET"[..], b"a b", b"", b"\x00\"\\"], &mut out);
        assert_eq!(&out[..], b"SET \"a b\" \"\" \"\\x00\\\"\\\\\"\r\n");
        let commands = parse_all(&out, RespLimits::default()).unwrap();
        assert_eq!(commands, vec![vec![b"SET".to_vec(), b"a b".to_vec(), vec![], b"\x00\"\\".to_vec()]]);
    }
}
