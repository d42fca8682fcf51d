//! The client codec, as the load generator and the node use it per request:
//!
//! - `kv/encode_put` and `kv/encode_get`: the key-value command or query
//!   (`net::kv::KvOp`) a request carries;
//! - `request/encode/*`: a client request frame into a reused buffer
//!   (header, crc32c of the body);
//! - `request/decode/*`: header and body checks (both crcs) and parsing of
//!   one frame from a contiguous buffer;
//! - `response/encode/*` and `response/decode/*`: the same for answers
//!   (`Ok` with a write's answer, `NotLeader` with an address);
//! - `answer/check_write`: reading the state machine's answer to a write.
//!
//! Run: `cargo bench -p bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use net::kv::{KvOp, KvResponse};
use net::{
    encode_request, encode_response, ClientRequest, ClientResponse, Frame, Limits, ReadConsistency, RequestBody,
    ResponseStatus,
};

fn key() -> Bytes {
    bench::workload::key_name(123_456)
}

fn requests() -> Vec<(String, ClientRequest)> {
    let mut requests = Vec::new();
    for value_size in [256usize, 4_096] {
        let command = KvOp::Put { key: key(), value: Bytes::from(vec![7u8; value_size]) }.encode();
        requests.push((
            format!("write_{value_size}B"),
            ClientRequest {
                request_id: 42,
                client_id: 0xDEAD_BEEF,
                sequence: 17,
                ack: 15,
                body: RequestBody::Write { command },
            },
        ));
    }
    let query = KvOp::Get { key: key() }.encode();
    requests.push((
        "read".to_string(),
        ClientRequest {
            request_id: 43,
            client_id: 0,
            sequence: 0,
            ack: 0,
            body: RequestBody::Read { query, consistency: ReadConsistency::Linearizable },
        },
    ));
    requests
}

fn responses() -> Vec<(String, ClientResponse)> {
    vec![
        (
            "ok_written".to_string(),
            ClientResponse { request_id: 42, status: ResponseStatus::Ok(KvResponse::Written.encode()) },
        ),
        (
            "ok_value_256B".to_string(),
            ClientResponse {
                request_id: 43,
                status: ResponseStatus::Ok(KvResponse::Value(Some(Bytes::from(vec![7u8; 256]))).encode()),
            },
        ),
        (
            "not_leader".to_string(),
            ClientResponse {
                request_id: 44,
                status: ResponseStatus::NotLeader { leader_id: Some(2), leader_addr: Some("127.0.0.1:7103".into()) },
            },
        ),
    ]
}

/// One frame as contiguous bytes.
fn frame_bytes(encode: impl FnOnce(&mut BytesMut) -> Bytes) -> Bytes {
    let mut out = BytesMut::new();
    let tail = encode(&mut out);
    out.extend_from_slice(&tail);
    out.freeze()
}

fn kv(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv");
    let value = Bytes::from(vec![7u8; 256]);
    group.bench_function("encode_put/256B", |b| {
        b.iter(|| KvOp::Put { key: key(), value: std::hint::black_box(value.clone()) }.encode())
    });
    group.bench_function("encode_get", |b| b.iter(|| KvOp::Get { key: std::hint::black_box(key()) }.encode()));
    let written = KvResponse::Written.encode();
    group.bench_function("check_write_answer", |b| {
        b.iter(|| bench::runner::check_answer(bench::stats::OpKind::Write, std::hint::black_box(&written)))
    });
    group.finish();
}

fn requests_codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("request");
    for (label, request) in requests() {
        let bytes = frame_bytes(|out| encode_request(1, 0, &request, out));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = BytesMut::with_capacity(8_192);
        group.bench_function(BenchmarkId::new("encode", &label), |b| {
            b.iter(|| {
                out.clear();
                std::hint::black_box(encode_request(1, 0, std::hint::black_box(&request), &mut out))
            })
        });
        group.bench_function(BenchmarkId::new("decode", &label), |b| {
            b.iter(|| Frame::decode_bytes(std::hint::black_box(&bytes), &limits).expect("a valid frame"))
        });
    }
    group.finish();
}

fn responses_codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("response");
    for (label, response) in responses() {
        let bytes = frame_bytes(|out| encode_response(1, 0, &response, out));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = BytesMut::with_capacity(8_192);
        group.bench_function(BenchmarkId::new("encode", &label), |b| {
            b.iter(|| {
                out.clear();
                std::hint::black_box(encode_response(1, 0, std::hint::black_box(&response), &mut out))
            })
        });
        group.bench_function(BenchmarkId::new("decode", &label), |b| {
            b.iter(|| Frame::decode_bytes(std::hint::black_box(&bytes), &limits).expect("a valid frame"))
        });
    }
    group.finish();
}

criterion_group!(benches, kv, requests_codec, responses_codec);
criterion_main!(benches);
