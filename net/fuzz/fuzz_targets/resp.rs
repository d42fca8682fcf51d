//! Feeds arbitrary bytes to the RESP parsers (`net::resp`), whole and split
//! at a byte the input chooses: none may panic, a pipeline split in two
//! parses to the same commands, and a parsed command re-encoded as a RESP
//! array parses back to the same arguments.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use net::resp::{encode_command, CommandParser, ReplyParser, RespLimits};

fn commands(parser: &CommandParser, chunks: &[&[u8]]) -> (Vec<Vec<bytes::Bytes>>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.next(&mut buf) {
                Ok(Some(command)) => out.push(command.args),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let limits = RespLimits {
        arguments_max: 16,
        bulk_length_max: 4096,
        inline_length_max: 1024,
        command_bytes_max: 8192,
        depth_max: 8,
    };
    let parser = CommandParser::new(limits);
    let (whole, whole_failed) = commands(&parser, &[data]);
    let at = usize::from(cut).min(data.len());
    let (split, split_failed) = commands(&parser, &[&data[..at], &data[at..]]);
    assert_eq!(whole_failed, split_failed);
    assert_eq!(whole, split);
    for args in &whole {
        let mut wire = BytesMut::new();
        encode_command(args, &mut wire);
        let again = parser.next(&mut wire).expect("re-encoded command parses").expect("complete");
        assert_eq!(&again.args, args);
    }
    let replies = ReplyParser::new(limits);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = replies.next(&mut buf) {}
});
