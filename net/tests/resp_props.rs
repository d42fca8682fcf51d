//! Properties of the RESP codec (`net::resp`): what the encoders write the
//! parsers read back; a pipeline split at any byte parses to the same
//! commands and replies; arbitrary bytes never panic and never make a parser
//! hold more than its bounds.
//!
//! `RESP_PROPTEST_CASES=N` runs more cases (CI runs the default); a failure
//! prints the shrunk input and proptest's seed (in
//! `proptest-regressions/`), which replays it.

use bytes::{Bytes, BytesMut};
use net::resp::{
    encode_command, encode_inline, Command, CommandParser, Reply, ReplyParser, RespError, RespLimits, Version,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("RESP_PROPTEST_CASES").ok().and_then(|value| value.parse().ok()).unwrap_or(512)
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..40), "[a-zA-Z0-9:_-]{1,12}".prop_map(String::into_bytes),]
}

fn command_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 1..6)
}

/// Replies that every version encodes as themselves (RESP2's types).
fn resp2_reply() -> impl Strategy<Value = Reply> {
    let text = "[ -~]{0,20}".prop_map(|text| Bytes::from(text.into_bytes()));
    let leaf = prop_oneof![
        text.clone().prop_map(Reply::Simple),
        text.prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| Reply::Bulk(Bytes::from(bytes))),
        Just(Reply::Null),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| proptest::collection::vec(inner, 0..5).prop_map(Reply::Array))
}

/// Every reply type, for RESP3.
fn resp3_reply() -> impl Strategy<Value = Reply> {
    let text = "[ -~]{0,20}".prop_map(|text| Bytes::from(text.into_bytes()));
    let leaf = prop_oneof![
        text.clone().prop_map(Reply::Simple),
        text.clone().prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| Reply::Bulk(Bytes::from(bytes))),
        Just(Reply::Null),
        // NaN is not equal to itself; it has its own unit test.
        prop_oneof![any::<f64>().prop_filter("not NaN", |v| !v.is_nan()), Just(f64::INFINITY)].prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Boolean),
        ("[a-z]{3}", text)
            .prop_map(|(format, text)| Reply::Verbatim { format: format.as_bytes().try_into().unwrap(), text }),
        "-?[0-9]{1,40}".prop_map(|digits| Reply::BigNumber(Bytes::from(digits.into_bytes()))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Array),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Set),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Push),
            proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(Reply::Map),
        ]
    })
}

fn drain_commands(parser: &CommandParser, buf: &mut BytesMut, into: &mut Vec<Vec<Bytes>>) {
    while let Some(command) = parser.next(buf).expect("valid input parses") {
        into.push(command.args);
    }
}

fn drain_replies(parser: &ReplyParser, buf: &mut BytesMut, into: &mut Vec<Reply>) {
    while let Some(reply) = parser.next(buf).expect("valid input parses") {
        into.push(reply);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn commands_round_trip_as_arrays_and_inline(commands in proptest::collection::vec(command_args(), 1..5), inline in any::<bool>()) {
        let mut wire = BytesMut::new();
        for args in &commands {
            if inline { encode_inline(args, &mut wire) } else { encode_command(args, &mut wire) }
        }
        let parser = CommandParser::default();
        let mut parsed = Vec::new();
        drain_commands(&parser, &mut wire, &mut parsed);
        prop_assert!(wire.is_empty());
        let expected: Vec<Vec<Bytes>> =
            commands.iter().map(|args| args.iter().map(|arg| Bytes::from(arg.clone())).collect()).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn a_command_pipeline_split_anywhere_parses_the_same(commands in proptest::collection::vec(command_args(), 1..4), inline in any::<bool>()) {
        let mut wire = BytesMut::new();
        for args in &commands {
            if inline { encode_inline(args, &mut wire) } else { encode_command(args, &mut wire) }
        }
        let parser = CommandParser::default();
        let mut whole = Vec::new();
        drain_commands(&parser, &mut wire.clone(), &mut whole);
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut parsed = Vec::new();
            drain_commands(&parser, &mut buf, &mut parsed);
            buf.extend_from_slice(&wire[cut..]);
            drain_commands(&parser, &mut buf, &mut parsed);
            prop_assert!(buf.is_empty(), "cut at {}", cut);
            prop_assert_eq!(&parsed, &whole, "cut at {}", cut);
        }
    }

    #[test]
    fn resp2_replies_round_trip_in_both_versions(replies in proptest::collection::vec(resp2_reply(), 1..4)) {
        for version in [Version::Resp2, Version::Resp3] {
            let mut wire = BytesMut::new();
            for reply in &replies {
                reply.encode(version, &mut wire);
            }
            let mut parsed = Vec::new();
            drain_replies(&ReplyParser::default(), &mut wire, &mut parsed);
            prop_assert!(wire.is_empty());
            prop_assert_eq!(&parsed, &replies);
        }
    }

    #[test]
    fn resp3_replies_round_trip_and_split_anywhere(replies in proptest::collection::vec(resp3_reply(), 1..3)) {
        let mut wire = BytesMut::new();
        for reply in &replies {
            reply.encode(Version::Resp3, &mut wire);
        }
        let parser = ReplyParser::default();
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut parsed = Vec::new();
            drain_replies(&parser, &mut buf, &mut parsed);
            buf.extend_from_slice(&wire[cut..]);
            drain_replies(&parser, &mut buf, &mut parsed);
            prop_assert!(buf.is_empty());
            prop_assert_eq!(&parsed, &replies, "cut at {}", cut);
        }
    }

    #[test]
    fn resp3_replies_downgrade_to_parseable_resp2(reply in resp3_reply()) {
        // What a RESP2 client gets from a RESP3-typed reply is valid RESP2
        // that holds no RESP3 type byte.
        let mut wire = BytesMut::from(&reply.to_bytes(Version::Resp2)[..]);
        let parsed = ReplyParser::default().next(&mut wire).expect("valid RESP2").expect("complete");
        prop_assert!(wire.is_empty());
        prop_assert!(only_resp2_types(&parsed), "{:?}", parsed);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overrun_the_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..512), small in any::<bool>()) {
        let limits = if small {
            RespLimits { arguments_max: 3, bulk_length_max: 16, inline_length_max: 32, command_bytes_max: 64, depth_max: 3 }
        } else {
            RespLimits::default()
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let parser = CommandParser::new(limits);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(Command { args, .. })) => {
                    prop_assert!(!args.is_empty() && args.len() <= limits.arguments_max);
                    prop_assert!(args.iter().all(|arg| arg.len() <= limits.bulk_length_max.max(limits.inline_length_max)));
                }
                Ok(None) => {
                    // Whatever is left waiting for more bytes is within the bounds.
                    prop_assert!(buf.len() < limits.command_bytes_max.max(limits.inline_length_max));
                    break;
                }
                Err(_) => break,
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let parser = ReplyParser::new(limits);
        while let Ok(Some(_)) = parser.next(&mut buf) {}
    }

    #[test]
    fn damaged_encodings_never_panic(reply in resp3_reply(), position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut wire = reply.to_bytes(Version::Resp3).to_vec();
        let at = position.index(wire.len());
        wire[at] = byte;
        let mut buf = BytesMut::from(&wire[..]);
        let _ = ReplyParser::default().next(&mut buf);
        let mut buf = BytesMut::from(&wire[..]);
        let _ = CommandParser::default().next(&mut buf);
    }

    /// A malformed stream is an error, never silently skipped or taken as a
    /// shorter command: an argument whose `$` is replaced by another byte,
    /// or whose bytes are not followed by CRLF, is refused whatever follows
    /// (the node's RESP front door closes such a connection).
    #[test]
    fn a_malformed_command_stream_is_an_error(
        args in command_args(),
        which in any::<prop::sample::Index>(),
        byte in any::<u8>().prop_filter("not '$'", |byte| *byte != b'$'),
        damage_crlf in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut wire = BytesMut::new();
        encode_command(&args, &mut wire);
        let mut wire = wire.to_vec();
        // The `$` of each argument: after the array header and each earlier
        // argument's `$len\r\n` + bytes + `\r\n`.
        let mut starts = Vec::new();
        let mut at = wire.iter().position(|b| *b == b'\n').unwrap() + 1;
        for arg in &args {
            starts.push(at);
            let header = format!("${}\r\n", arg.len()).len();
            at += header + arg.len() + 2;
        }
        let start = starts[which.index(starts.len())];
        let arg_len = args[which.index(starts.len())].len();
        if damage_crlf {
            let header = format!("${arg_len}\r\n").len();
            wire[start + header + arg_len] = b'x';
        } else {
            wire[start] = byte;
        }
        wire.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&wire[..]);
        let outcome = CommandParser::default().next(&mut buf);
        prop_assert!(outcome.is_err(), "damaged {:?} parsed as {:?}", wire, outcome);
    }
}

fn only_resp2_types(reply: &Reply) -> bool {
    match reply {
        Reply::Simple(_) | Reply::Error(_) | Reply::Integer(_) | Reply::Bulk(_) | Reply::Null => true,
        Reply::Array(items) => items.iter().all(only_resp2_types),
        _ => false,
    }
}

#[test]
fn nan_round_trips_as_nan() {
    let mut wire = BytesMut::from(&Reply::Double(f64::NAN).to_bytes(Version::Resp3)[..]);
    assert_eq!(&wire[..], b",nan\r\n");
    assert!(matches!(ReplyParser::default().next(&mut wire), Ok(Some(Reply::Double(value))) if value.is_nan()));
}

#[test]
fn a_huge_claimed_length_reserves_nothing() {
    // 2^62 bytes claimed: refused from the length line, with the buffer
    // still its original few bytes.
    let mut buf = BytesMut::from(&b"*1\r\n$4611686018427387904\r\n"[..]);
    let capacity = buf.capacity();
    let error = CommandParser::default().next(&mut buf).unwrap_err();
    assert!(matches!(error, RespError::BulkTooLong { .. }), "{error}");
    assert_eq!(buf.capacity(), capacity);
    let mut buf = BytesMut::from(&b"*4611686018427387904\r\n"[..]);
    assert!(matches!(CommandParser::default().next(&mut buf), Err(RespError::ArgumentsTooMany { .. })));
}
