//! Readers for the two history formats of the shared test data
//! (`shared/testdata/linearizability/README.md` describes them).
//!
//! Both keep the line number as the time of an event: only the order of events
//! matters, and a violation then names lines of the file.

use std::collections::HashMap;

use super::history::{HistoryRecorder, Operation, OperationId};
use super::models::{KvInput, KvOutput, RegisterInput, RegisterOutput};

/// A history file that cannot be read as a history. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is not an event of the format; fix or remove it.
    #[error("line {line}: {reason}: {text:?}")]
    Malformed {
        /// The line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
        /// The line itself.
        text: String,
    },
    /// A completion with no open invocation of the same process: the log is
    /// truncated at the start or interleaves two runs.
    #[error("line {line}: process {process} completes an operation it never invoked")]
    CompletionWithoutInvoke {
        /// The line number.
        line: usize,
        /// The process.
        process: u64,
    },
    /// A process invokes while its previous operation is still open, which a
    /// Jepsen process never does: the log interleaves two runs.
    #[error("line {line}: process {process} invokes while its operation from line {pending_line} is still open")]
    InvokeWhilePending {
        /// The line number.
        line: usize,
        /// The process.
        process: u64,
        /// The line of the open invocation.
        pending_line: usize,
    },
    /// A completion that does not describe the operation it completes.
    #[error("line {line}: process {process} completes `{completed}` but invoked `{invoked}` on line {invoke_line}")]
    MismatchedCompletion {
        /// The line number.
        line: usize,
        /// The process.
        process: u64,
        /// The line of the invocation.
        invoke_line: usize,
        /// The invoked function and value.
        invoked: String,
        /// The completed function and value.
        completed: String,
    },
}

/// The kind of a Jepsen event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl EventType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            ":invoke" | "invoke" => Some(Self::Invoke),
            ":ok" | "ok" => Some(Self::Ok),
            ":fail" | "fail" => Some(Self::Fail),
            ":info" | "info" => Some(Self::Info),
            _ => None,
        }
    }
}

/// An invocation waiting for its completion.
struct Open<I> {
    id: OperationId,
    line: usize,
    input: I,
}

/// Reads a Jepsen etcd log (`jepsen-etcd/etcd_NNN.log`) as a register
/// history for [`RegisterModel`](super::models::RegisterModel).
///
/// - `:fail :cas` completes the CAS with `swapped: false` (an observation).
/// - `:fail :read` and `:fail :write` are dropped: they tell nothing / did not
///   happen.
/// - `:info` on a write or CAS leaves the outcome unknown; an `:info` read is
///   dropped. An invocation still open at the end of the log counts as
///   `:info`.
/// - Lines without `jepsen.util` and nemesis events are noise.
pub fn parse_etcd_log(text: &str) -> Result<Vec<Operation<RegisterInput, RegisterOutput>>, ParseError> {
    const MARKER: &str = "jepsen.util - ";
    let mut recorder = HistoryRecorder::new();
    let mut open: HashMap<u64, Open<RegisterInput>> = HashMap::new();
    for (line_index, raw) in text.lines().enumerate() {
        let line = line_index + 1;
        let Some(at) = raw.find(MARKER) else { continue };
        let malformed =
            |reason: &str| ParseError::Malformed { line, reason: reason.to_string(), text: raw.to_string() };
        let mut fields = raw[at + MARKER.len()..].split_whitespace();
        let (Some(process), Some(event_type), Some(function)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(malformed("expected PROCESS TYPE F VALUE after `jepsen.util - `"));
        };
        if process == ":nemesis" {
            continue;
        }
        let value = fields.collect::<Vec<_>>().join(" ");
        let process: u64 = process.parse().map_err(|_| malformed("the process is not a number"))?;
        let event_type =
            EventType::parse(event_type).ok_or_else(|| malformed("unknown type, want :invoke, :ok, :fail or :info"))?;
        let time = line as u64;

        if event_type == EventType::Invoke {
            let input = match function {
                ":read" => RegisterInput::Read,
                ":write" => RegisterInput::Write(parse_integer(&value).ok_or_else(|| malformed("bad write value"))?),
                ":cas" => {
                    let (expected, new) = parse_pair(&value).ok_or_else(|| malformed("bad cas value, want [a b]"))?;
                    RegisterInput::Cas { expected, new }
                }
                _ => return Err(malformed("unknown function, want :read, :write or :cas")),
            };
            if let Some(pending) = open.get(&process) {
                return Err(ParseError::InvokeWhilePending { line, process, pending_line: pending.line });
            }
            let id = recorder.invoke(process, input, time);
            open.insert(process, Open { id, line, input });
            continue;
        }

        let invoked = open.remove(&process).ok_or(ParseError::CompletionWithoutInvoke { line, process })?;
        let mismatch = || ParseError::MismatchedCompletion {
            line,
            process,
            invoke_line: invoked.line,
            invoked: format!("{:?}", invoked.input),
            completed: format!("{function} {value}"),
        };
        let same_function = matches!(
            (function, invoked.input),
            (":read", RegisterInput::Read) | (":write", RegisterInput::Write(_)) | (":cas", RegisterInput::Cas { .. })
        );
        if !same_function {
            return Err(mismatch());
        }
        // An `:ok` or `:fail` write or CAS repeats the invoked value (an
        // `:info` carries the error instead); a difference means the lines
        // are paired wrongly.
        let repeats_value = match invoked.input {
            RegisterInput::Read => true,
            RegisterInput::Write(written) => parse_integer(&value) == Some(written),
            RegisterInput::Cas { expected, new } => parse_pair(&value) == Some((expected, new)),
        };
        if matches!(event_type, EventType::Ok | EventType::Fail) && !repeats_value {
            return Err(mismatch());
        }
        match (event_type, invoked.input) {
            (EventType::Ok, RegisterInput::Read) => {
                let read = if value == "nil" {
                    None
                } else {
                    Some(parse_integer(&value).ok_or_else(|| malformed("bad read value, want an integer or nil"))?)
                };
                recorder.complete(invoked.id, RegisterOutput::Read(read), time);
            }
            // A failed or indeterminate read constrains nothing; a failed
            // write did not happen.
            (EventType::Fail | EventType::Info, RegisterInput::Read) | (EventType::Fail, RegisterInput::Write(_)) => {
                recorder.discard(invoked.id)
            }
            (EventType::Ok, RegisterInput::Write(_)) => recorder.complete(invoked.id, RegisterOutput::Written, time),
            (EventType::Ok, RegisterInput::Cas { .. }) => {
                recorder.complete(invoked.id, RegisterOutput::Cas { swapped: true }, time)
            }
            (EventType::Fail, RegisterInput::Cas { .. }) => {
                recorder.complete(invoked.id, RegisterOutput::Cas { swapped: false }, time)
            }
            // The operation stays open: its outcome is unknown.
            (EventType::Info, _) => {}
            (EventType::Invoke, _) => unreachable!("invocations are handled above"),
        }
    }
    for (_, pending) in open {
        if pending.input == RegisterInput::Read {
            recorder.discard(pending.id);
        }
    }
    Ok(recorder.into_operations())
}

/// Reads a history of Porcupine's key-value tests (`kv/cNN-{ok,bad}.txt`) for
/// [`KvModel`](super::models::KvModel): one EDN map per line.
///
/// `:fail` drops the operation (it did not happen); `:info` leaves a put or
/// append with an unknown outcome and drops a get; an invocation still open at
/// the end counts as `:info`. A get's `nil` result reads as the empty string.
pub fn parse_kv_history(text: &str) -> Result<Vec<Operation<KvInput, KvOutput>>, ParseError> {
    let mut recorder = HistoryRecorder::new();
    let mut open: HashMap<u64, Open<KvInput>> = HashMap::new();
    for (line_index, raw) in text.lines().enumerate() {
        let line = line_index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let malformed =
            |reason: &str| ParseError::Malformed { line, reason: reason.to_string(), text: raw.to_string() };
        let map = parse_edn_map(raw).map_err(|reason| malformed(&reason))?;
        let field = |name: &str| map.iter().find(|(key, _)| *key == name).map(|(_, value)| value);
        let process = match field("process") {
            Some(EdnValue::Integer(process)) if *process >= 0 => *process as u64,
            _ => return Err(malformed("missing or bad :process, want a non-negative integer")),
        };
        let event_type = match field("type") {
            Some(EdnValue::Keyword(event_type)) => EventType::parse(event_type),
            _ => None,
        }
        .ok_or_else(|| malformed("missing or bad :type, want :invoke, :ok, :fail or :info"))?;
        let key = match field("key") {
            Some(EdnValue::String(key)) => key.clone(),
            _ => return Err(malformed("missing or bad :key, want a string")),
        };
        let value = match field("value") {
            Some(EdnValue::String(value)) => Some(value.clone()),
            Some(EdnValue::Nil) => None,
            _ => return Err(malformed("missing or bad :value, want a string or nil")),
        };
        let input = match (field("f"), value.clone()) {
            (Some(EdnValue::Keyword(f)), _) if f == "get" => KvInput::Get { key },
            (Some(EdnValue::Keyword(f)), Some(value)) if f == "put" => KvInput::Put { key, value },
            (Some(EdnValue::Keyword(f)), Some(value)) if f == "append" => KvInput::Append { key, value },
            (Some(EdnValue::Keyword(f)), None) if f == "put" || f == "append" => {
                return Err(malformed("a put or append needs a string :value"))
            }
            _ => return Err(malformed("missing or bad :f, want :get, :put or :append")),
        };
        let time = line as u64;

        if event_type == EventType::Invoke {
            if let Some(pending) = open.get(&process) {
                return Err(ParseError::InvokeWhilePending { line, process, pending_line: pending.line });
            }
            let id = recorder.invoke(process, input.clone(), time);
            open.insert(process, Open { id, line, input });
            continue;
        }

        let invoked = open.remove(&process).ok_or(ParseError::CompletionWithoutInvoke { line, process })?;
        let same_request = match (&invoked.input, &input) {
            (KvInput::Get { key: invoked_key }, KvInput::Get { key }) => invoked_key == key,
            (invoked_input, input) => invoked_input == input,
        };
        if !same_request {
            return Err(ParseError::MismatchedCompletion {
                line,
                process,
                invoke_line: invoked.line,
                invoked: format!("{:?}", invoked.input),
                completed: format!("{input:?}"),
            });
        }
        match (event_type, &invoked.input) {
            (EventType::Ok, KvInput::Get { .. }) => {
                recorder.complete(invoked.id, KvOutput::Value(value.unwrap_or_default()), time)
            }
            (EventType::Ok, _) => recorder.complete(invoked.id, KvOutput::Done, time),
            (EventType::Fail, _) | (EventType::Info, KvInput::Get { .. }) => recorder.discard(invoked.id),
            (EventType::Info, _) => {}
            (EventType::Invoke, _) => unreachable!("invocations are handled above"),
        }
    }
    for (_, pending) in open {
        if matches!(pending.input, KvInput::Get { .. }) {
            recorder.discard(pending.id);
        }
    }
    Ok(recorder.into_operations())
}

fn parse_integer(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// `[a b]`, the value of a CAS.
fn parse_pair(text: &str) -> Option<(i64, i64)> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut numbers = inner.split(|c: char| c.is_whitespace() || c == ',').filter(|part| !part.is_empty());
    let pair = (parse_integer(numbers.next()?)?, parse_integer(numbers.next()?)?);
    numbers.next().is_none().then_some(pair)
}

/// A value of the small EDN subset the key-value histories use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EdnValue {
    Nil,
    Integer(i64),
    /// Without the leading colon.
    Keyword(String),
    String(String),
}

/// Reads `{:k v, :k v}` into (keyword without colon, value) pairs. Commas are
/// whitespace in EDN.
fn parse_edn_map(line: &str) -> Result<Vec<(&str, EdnValue)>, String> {
    let inner =
        line.trim().strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).ok_or("expected a map in braces")?;
    let is_separator = |c: char| c.is_whitespace() || c == ',';
    let mut rest = inner;
    let mut pairs = Vec::new();
    loop {
        rest = rest.trim_start_matches(is_separator);
        if rest.is_empty() {
            return Ok(pairs);
        }
        let after_colon = rest.strip_prefix(':').ok_or_else(|| format!("expected a :keyword at {rest:?}"))?;
        let end = after_colon.find(is_separator).unwrap_or(after_colon.len());
        let name = &after_colon[..end];
        rest = after_colon[end..].trim_start_matches(is_separator);
        let (value, after) = parse_edn_value(rest).map_err(|reason| format!("value of :{name}: {reason}"))?;
        pairs.push((name, value));
        rest = after;
    }
}

/// Reads one value at the start of `text`; returns it and the rest.
fn parse_edn_value(text: &str) -> Result<(EdnValue, &str), String> {
    if let Some(body) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => return Ok((EdnValue::String(value), &body[index + 1..])),
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                    other => return Err(format!("unknown escape {other:?}")),
                },
                c => value.push(c),
            }
        }
        return Err("unterminated string".to_string());
    }
    let end = text.find(|c: char| c.is_whitespace() || c == ',').unwrap_or(text.len());
    let (atom, rest) = text.split_at(end);
    let value = if atom == "nil" {
        EdnValue::Nil
    } else if let Some(keyword) = atom.strip_prefix(':') {
        EdnValue::Keyword(keyword.to_string())
    } else if let Ok(integer) = atom.parse() {
        EdnValue::Integer(integer)
    } else {
        return Err(format!("expected a string, keyword, integer or nil, found {atom:?}"));
    };
    Ok((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_log_with_tabs_spaces_noise_and_every_event_kind() {
        let log = "\
INFO  jepsen.util - 0\t:invoke\t:write\t3
some noise from the test harness
INFO  jepsen.util - 1   :invoke :cas    [3 4]
INFO  jepsen.util - 2\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 1   :fail   :cas    [3 4]
INFO  jepsen.util - 2\t:ok\t:read\t3
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:fail\t:read\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:write\t1
INFO  jepsen.util - 4\t:info\t:write\t:timed-out
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.util - 5\t:invoke\t:read\tnil
";
        let history = parse_etcd_log(log).unwrap();
        assert_eq!(
            history,
            vec![
                Operation::completed(0, RegisterInput::Write(3), 1, RegisterOutput::Written, 5),
                Operation::completed(
                    1,
                    RegisterInput::Cas { expected: 3, new: 4 },
                    3,
                    RegisterOutput::Cas { swapped: false },
                    6
                ),
                Operation::completed(2, RegisterInput::Read, 4, RegisterOutput::Read(Some(3)), 7),
                Operation::unknown(4, RegisterInput::Write(1), 10),
            ]
        );
    }

    #[test]
    fn etcd_errors_name_the_line_and_the_problem() {
        let error = parse_etcd_log("noise\nINFO  jepsen.util - 0\t:invoke\t:cas\t[1]\n").unwrap_err();
        assert!(matches!(error, ParseError::Malformed { line: 2, .. }), "{error}");
        assert!(error.to_string().contains("bad cas value"), "{error}");

        let error = parse_etcd_log("INFO  jepsen.util - 0\t:ok\t:write\t3\n").unwrap_err();
        assert_eq!(error, ParseError::CompletionWithoutInvoke { line: 1, process: 0 });

        let log = "INFO  jepsen.util - 0\t:invoke\t:write\t3\nINFO  jepsen.util - 0\t:ok\t:write\t4\n";
        let error = parse_etcd_log(log).unwrap_err();
        assert!(matches!(error, ParseError::MismatchedCompletion { line: 2, invoke_line: 1, .. }), "{error}");

        let log = "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nINFO  jepsen.util - 0\t:invoke\t:read\tnil\n";
        let error = parse_etcd_log(log).unwrap_err();
        assert_eq!(error, ParseError::InvokeWhilePending { line: 2, process: 0, pending_line: 1 });

        let error = parse_etcd_log("INFO  jepsen.util - x\t:invoke\t:read\tnil\n").unwrap_err();
        assert!(error.to_string().contains("process is not a number"), "{error}");
        let error = parse_etcd_log("INFO  jepsen.util - 0\t:invoke\n").unwrap_err();
        assert!(error.to_string().contains("expected PROCESS TYPE F VALUE"), "{error}");
    }

    #[test]
    fn kv_history_lines_are_edn_maps() {
        let text = r#"{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "0", :value nil}
{:process 0, :type :ok, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :ok, :f :get, :key "0", :value "x, \"q\""}

{:process 2, :type :invoke, :f :put, :key "1", :value "v"}
{:process 3, :type :invoke, :f :get, :key "1", :value nil}
{:process 3, :type :ok, :f :get, :key "1", :value nil}
"#;
        let history = parse_kv_history(text).unwrap();
        let key = |key: &str| key.to_string();
        assert_eq!(
            history,
            vec![
                Operation::completed(
                    0,
                    KvInput::Append { key: key("0"), value: "x 0 0 y".into() },
                    1,
                    KvOutput::Done,
                    3
                ),
                Operation::completed(1, KvInput::Get { key: key("0") }, 2, KvOutput::Value("x, \"q\"".into()), 4),
                Operation::unknown(2, KvInput::Put { key: key("1"), value: "v".into() }, 6),
                Operation::completed(3, KvInput::Get { key: key("1") }, 7, KvOutput::Value(String::new()), 8),
            ]
        );
    }

    #[test]
    fn kv_errors_name_the_line_and_the_problem() {
        let error = parse_kv_history(r#"{:process 0, :type :invoke, :f :get, :value nil}"#).unwrap_err();
        assert!(error.to_string().contains("missing or bad :key"), "{error}");
        let error = parse_kv_history(r#"{:process 0, :type :invoke, :f :get, :key "k, :value nil}"#).unwrap_err();
        assert!(error.to_string().contains("unterminated string"), "{error}");
        let error = parse_kv_history(":process 0").unwrap_err();
        assert!(error.to_string().contains("expected a map in braces"), "{error}");
        let error = parse_kv_history(r#"{:process 0, :type :invoke, :f :cas, :key "k", :value "v"}"#).unwrap_err();
        assert!(error.to_string().contains("missing or bad :f"), "{error}");
        let text = r#"{:process 0, :type :invoke, :f :put, :key "k", :value "v"}
{:process 0, :type :ok, :f :put, :key "k", :value "w"}"#;
        let error = parse_kv_history(text).unwrap_err();
        assert!(matches!(error, ParseError::MismatchedCompletion { line: 2, invoke_line: 1, .. }), "{error}");
    }
}
