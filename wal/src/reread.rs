//! Reading again, ahead of need, the records whose payloads recovery
//! dropped (see [`crate::WalConfig::recovery_payload_bytes`]).
//!
//! Why not one `pread` per record: that read went through the page cache
//! (a kernel copy of every byte, a third of a restart's second pass) into
//! a zeroed buffer, one record at a time while the shard waited, so a log
//! read again made a restart take twice as long as one read (bench/RESULTS.md,
//! "Recovery against the read floor"). Here the records are grouped into
//! windows of about [`READ_CHUNK`] bytes of one segment, which
//! [`READS_IN_FLIGHT`] threads read with `O_DIRECT` (where the file system
//! allows it) up to [`WINDOWS_AHEAD`] windows ahead of the one the shard
//! applies, as the first pass does. The entries borrow their window's
//! buffer, as they borrow the first pass's segment buffers.
//!
//! No `flock` is taken (unlike the first pass): the log's writer holds an
//! exclusive one on the active segment, and the records read again all
//! lie below what recovery found durable.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::error::WalError;
use crate::recovery::{AlignedBytes, RecordAt, READS_IN_FLIGHT, READ_CHUNK};
use crate::segment::{align_up, DIRECT_IO_ALIGN};

/// Windows read (or being read) ahead of the one the reader waits for: with
/// windows of about [`READ_CHUNK`], about 16 MiB of a shard's memory.
const WINDOWS_AHEAD: usize = 16;

/// Aligned bytes `[at, at + length)` of one segment, holding whole records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub segment: usize,
    pub at: usize,
    pub length: usize,
}

/// Groups `records` (in log order) into windows: consecutive records of one
/// segment, in file order, spanning at most [`READ_CHUNK`] aligned bytes
/// (a longer record gets a window of its own). Returns the windows and,
/// for each record, its window.
pub(crate) fn windows(records: &VecDeque<RecordAt>) -> (Vec<Window>, Vec<usize>) {
    let mut windows: Vec<Window> = Vec::new();
    let mut of_record = Vec::with_capacity(records.len());
    for record in records {
        let end = align_up((record.offset + record.length) as u64) as usize;
        let fits = windows.last().is_some_and(|window| {
            window.segment == record.segment
                && record.offset >= window.at
                && end.max(window.at + window.length) - window.at <= READ_CHUNK
        });
        match windows.last_mut() {
            Some(window) if fits => window.length = end.max(window.at + window.length) - window.at,
            _ => {
                let at = record.offset / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN;
                windows.push(Window { segment: record.segment, at, length: end - at });
            }
        }
        of_record.push(windows.len() - 1);
    }
    (windows, of_record)
}

/// Threads reading [`Window`]s in order, ahead of the one asked for.
pub(crate) struct Prefetch {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The window last handed out, which the next records likely lie in.
    current: Option<(usize, Bytes)>,
}

struct Shared {
    /// Each segment's file and path (`None`: no record to read there).
    files: Vec<Option<(fs::File, PathBuf)>>,
    windows: Vec<Window>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The next window a thread takes.
    next: usize,
    /// The window the reader waits for, or will next: windows below it are
    /// not needed any more, and the threads stay within [`WINDOWS_AHEAD`].
    wanted: usize,
    read: BTreeMap<usize, std::io::Result<Bytes>>,
    /// Whether the reader is gone: the threads end.
    stopped: bool,
    panicked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(PoisonError::into_inner)
    }

    /// A reading thread: takes the next window within reach until every
    /// window is read or the reader is gone.
    fn read_windows(&self) {
        let _leave = Panicked(self);
        let mut state = self.lock();
        loop {
            if state.stopped || state.next >= self.windows.len() {
                return;
            }
            if state.next >= state.wanted + WINDOWS_AHEAD {
                state = self.wait(state);
                continue;
            }
            let number = state.next;
            state.next += 1;
            if number < state.wanted {
                continue;
            }
            drop(state);
            let read = self.read_window(&self.windows[number]);
            state = self.lock();
            if number >= state.wanted {
                state.read.insert(number, read);
                self.changed.notify_all();
            }
        }
    }

    fn read_window(&self, window: &Window) -> std::io::Result<Bytes> {
        let Some((file, _)) = &self.files[window.segment] else { unreachable!("every window's segment is opened") };
        let mut buffer = AlignedBytes::new(window.length);
        // SAFETY: the buffer is this thread's own, and `window.length` is
        // its size.
        let read = unsafe { buffer.read_into(file, window.at as u64, 0, window.length)? };
        buffer.len = read;
        Ok(Bytes::from_owner(buffer))
    }
}

/// Tells the reader, if a reading thread unwinds, not to wait for it.
struct Panicked<'a>(&'a Shared);

impl Drop for Panicked<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().panicked = true;
            self.0.changed.notify_all();
        }
    }
}

impl Prefetch {
    /// Opens the segments `windows` lie in (`O_DIRECT` where the file system
    /// allows it) and starts reading them.
    pub(crate) fn start(segments: &[(PathBuf, u32)], windows: Vec<Window>) -> Result<Prefetch, WalError> {
        let mut files: Vec<Option<(fs::File, PathBuf)>> = (0..segments.len()).map(|_| None).collect();
        for window in &windows {
            if files[window.segment].is_none() {
                let path = &segments[window.segment].0;
                let (file, _) =
                    crate::segment::open_direct_to_read(path).map_err(|error| WalError::io("opening", path, error))?;
                files[window.segment] = Some((file, path.clone()));
            }
        }
        let threads = READS_IN_FLIGHT.min(windows.len());
        let shared = Arc::new(Shared { files, windows, state: Mutex::new(State::default()), changed: Condvar::new() });
        let threads = (0..threads)
            .map(|_| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("wal-reread".into())
                    .spawn(move || shared.read_windows())
                    .map_err(|error| WalError::io("starting a reading thread for", &segments[0].0, error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prefetch { shared, threads, current: None })
    }

    /// The bytes of `record`, which lies in window `number`; windows below
    /// it are never asked for again.
    pub(crate) fn record(&mut self, number: usize, record: &RecordAt) -> Result<Bytes, WalError> {
        if self.current.as_ref().is_none_or(|(current, _)| *current != number) {
            self.current = None;
            self.current = Some((number, self.take(number)?));
        }
        let (_, bytes) = self.current.as_ref().expect("taken above");
        let window = self.shared.windows[number];
        let from = record.offset - window.at;
        if bytes.len() < from + record.length {
            let path = self.path(number);
            let error = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends before the record at {} ({} bytes) that recovery read",
                    record.offset, record.length
                ),
            );
            return Err(WalError::io("reading", path, error));
        }
        Ok(bytes.slice(from..from + record.length))
    }

    fn take(&self, number: usize) -> Result<Bytes, WalError> {
        let mut state = self.shared.lock();
        state.wanted = number;
        state.read = state.read.split_off(&number);
        self.shared.changed.notify_all();
        let read = loop {
            if let Some(read) = state.read.remove(&number) {
                break read;
            }
            assert!(!state.panicked, "a thread reading the log again panicked");
            state = self.shared.wait(state);
        };
        state.wanted = number + 1;
        self.shared.changed.notify_all();
        drop(state);
        read.map_err(|error| WalError::io("reading", self.path(number), error))
    }

    fn path(&self, number: usize) -> &std::path::Path {
        let segment = self.shared.windows[number].segment;
        &self.shared.files[segment].as_ref().expect("opened at start").1
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(segment: usize, offset: usize, length: usize) -> RecordAt {
        RecordAt { segment, offset, length, first: 1, last: 1 }
    }

    #[test]
    fn records_are_grouped_into_aligned_windows_of_one_segment_within_a_chunk() {
        let records: VecDeque<RecordAt> = [
            record(0, 0, 100),
            record(0, 100, 5000),
            record(0, READ_CHUNK - 4096, 4096),
            record(0, READ_CHUNK, 10),
            record(1, 8192 + 17, 3 * READ_CHUNK),
            record(1, 8192 + 17 + 3 * READ_CHUNK, 1),
            record(2, 0, 1),
        ]
        .into();
        let (windows, of_record) = windows(&records);
        assert_eq!(
            windows,
            vec![
                Window { segment: 0, at: 0, length: READ_CHUNK },
                Window { segment: 0, at: READ_CHUNK, length: 4096 },
                Window { segment: 1, at: 8192, length: align_up((17 + 3 * READ_CHUNK) as u64) as usize },
                Window { segment: 1, at: 8192 + 3 * READ_CHUNK, length: 4096 },
                Window { segment: 2, at: 0, length: 4096 },
            ]
        );
        assert_eq!(of_record, vec![0, 0, 0, 1, 2, 3, 4]);
        for (record, window) in records.iter().zip(&of_record) {
            let window = windows[*window];
            assert!(window.at.is_multiple_of(DIRECT_IO_ALIGN) && window.length.is_multiple_of(DIRECT_IO_ALIGN));
            assert!(window.at <= record.offset && record.offset + record.length <= window.at + window.length);
        }
    }

    /// Byte `i` of the test file.
    fn byte(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 12)) as u8
    }

    #[test]
    fn records_come_back_byte_for_byte_through_many_windows_some_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        // One record of 700 KiB per MiB: a window each, more of them than the
        // threads may read ahead, so the reading waits for the reader.
        let count = WINDOWS_AHEAD * 2 + 5;
        let bytes: Vec<u8> = (0..count * READ_CHUNK).map(byte).collect();
        std::fs::write(&path, &bytes).unwrap();
        let records: VecDeque<RecordAt> =
            (0..count).map(|i| record(0, i * READ_CHUNK + 4096 + 17 * i, 700 << 10)).collect();
        let (windows, of_record) = windows(&records);
        assert_eq!(windows.len(), count);
        let mut prefetch = Prefetch::start(&[(path, 0)], windows).unwrap();
        for (i, (record, window)) in records.iter().zip(of_record).enumerate() {
            if i % 7 == 3 {
                continue; // skipped, as records whose entries were applied are
            }
            let read = prefetch.record(window, record).unwrap();
            assert!(read[..] == bytes[record.offset..record.offset + record.length], "record {i}");
        }
        drop(prefetch);
    }

    #[test]
    fn a_record_beyond_the_end_of_its_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let records: VecDeque<RecordAt> = [record(0, 4096, 100), record(0, 8000, 500)].into();
        let (windows, of_record) = windows(&records);
        let mut prefetch = Prefetch::start(&[(path, 0)], windows).unwrap();
        assert_eq!(&prefetch.record(of_record[0], &records[0]).unwrap()[..], &[7u8; 100][..]);
        let error = prefetch.record(of_record[1], &records[1]).unwrap_err().to_string();
        assert!(error.contains("00000000000000000001.wal") && error.contains("ends before"), "{error}");
    }
}
