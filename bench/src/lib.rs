//! The load generator of the Raft key-value node and its tools.
//!
//! - [`runner`] drives load against a cluster over the client protocol
//!   (`net::ClientConnection`), closed loop or open loop, and records HDR
//!   histograms ([`stats`]) per operation type.
//! - [`result`] is the JSON result file: the full configuration, throughput,
//!   percentiles and the serialized histograms, so runs can be compared later
//!   without losing resolution.
//! - [`compare`] prints side-by-side tables and draws percentile-distribution
//!   plots ([`plot`]) of several result files.
//! - [`cluster`] starts a local cluster of `node serve` processes for `sweep`,
//!   `demo` and the integration test, and always cleans it up.
//! - [`floor`] measures the machine's own limits (synced writes, disk
//!   bandwidth, loopback round trip), which result files record and
//!   comparisons divide by; [`cpu`] accounts the servers' CPU per write.
//! - [`resp_runner`] drives a Redis-protocol server (`redis-server`, the
//!   node's RESP front door) with the same workload and loops.
//! - [`report`] writes a results directory as one self-contained HTML page.
//!
//! The `bench` binary (`src/main.rs`) puts these behind `run`, `compare`,
//! `sweep`, `demo`, `floor` and `report` subcommands.

pub mod cluster;
pub mod compare;
pub mod cpu;
pub mod floor;
pub mod plot;
pub mod progress;
pub mod report;
pub mod resp_runner;
pub mod result;
pub mod runner;
pub mod schedule;
pub mod signal;
pub mod stats;
pub mod sweep;
pub mod workload;
