//! The byte stream under the frame code: a plain tokio-uring `TcpStream`, or
//! TLS 1.3 over one, with rustls's sans-I/O connection driven on the
//! connection's own thread.
//!
//! [`FrameIo`] is the two operations the frame code needs: append received
//! bytes to a buffer, and write a list of segments in order. Both keep
//! tokio-uring's ownership shape (the buffer or the segment list moves in and
//! comes back with the result), so the frame reader and the coalescing writer
//! are the same code for both transports. The plaintext implementation is the
//! socket operation itself; [`Stream`] picks one of the two with a `match`,
//! which is all that plaintext pays for TLS existing.
//!
//! TLS costs copies that plaintext does not make: ciphertext is read into a
//! buffer of the stream, decrypted by rustls, and the plaintext copied into
//! the frame reader's buffer; frames are copied into rustls, encrypted and
//! the records copied out into a reusable buffer for the socket. Frame bodies
//! stay zero-copy *above* the stream (decoded payloads are slices of the
//! reader's buffer either way). rustls's unbuffered API could save one copy
//! each way if the TLS benchmark says it matters.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::mem;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// Ciphertext asked of the kernel per read. A TLS record carries at most
/// 16 KiB of plaintext; two records per read keep system calls few.
pub const TLS_READ_SIZE: usize = 32 << 10;
/// The most ciphertext rustls buffers before it is written out, and so the
/// size the stream's reusable write buffer grows to: one socket write per
/// this many bytes of a large coalesced write.
pub const TLS_WRITE_CHUNK_BYTES: usize = 64 << 10;

/// What the frame reader and writer need from a byte stream.
///
/// Everything runs on one tokio-uring thread, so the futures are `!Send`;
/// the `async_fn_in_trait` lint is about `Send` bounds that never apply here.
#[allow(async_fn_in_trait)]
pub trait FrameIo {
    /// Appends at least one received byte to `buf`, within its spare capacity
    /// (`buf.len()..buf.capacity()`, which must not be empty), and returns how
    /// many; `Ok(0)` at the end of the stream.
    async fn read_append(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut);

    /// Writes every byte of `segments`, in order, then gives the vector back
    /// (emptied) for reuse.
    async fn write_segments(&self, segments: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>);
}

impl FrameIo for TcpStream {
    async fn read_append(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        let (start, end) = (buf.len(), buf.capacity());
        assert!(start < end, "read_append needs spare capacity");
        let (result, slice) = self.read(buf.slice(start..end)).await;
        (result, slice.into_inner())
    }

    async fn write_segments(&self, mut segments: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !segments.is_empty() {
            let (result, back) = self.writev(mem::take(&mut segments)).await;
            segments = back;
            let mut written = match result {
                Ok(0) => {
                    return (Err(io::Error::new(io::ErrorKind::WriteZero, "the socket accepted no bytes")), segments)
                }
                Ok(written) => written,
                Err(error) => return (Err(error), segments),
            };
            let mut consumed = 0;
            for segment in segments.iter_mut() {
                if written >= segment.len() {
                    written -= segment.len();
                    consumed += 1;
                } else {
                    segment.advance(written);
                    break;
                }
            }
            segments.drain(..consumed);
        }
        (Ok(()), segments)
    }
}

/// A connection's stream: plaintext or TLS, decided when it is opened.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls connection is over a kilobyte, a socket is a few words.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The socket under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Shuts the socket down (wakes any read or write in flight).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }

    /// The end-entity certificate the remote end presented (TLS only).
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.peer_certificate(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl FrameIo for Stream {
    async fn read_append(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Plain(tcp) => tcp.read_append(buf).await,
            Stream::Tls(tls) => tls.read_append(buf).await,
        }
    }

    async fn write_segments(&self, segments: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        match self {
            Stream::Plain(tcp) => tcp.write_segments(segments).await,
            Stream::Tls(tls) => tls.write_segments(segments).await,
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub(crate) enum TlsHandshakeError {
    /// The socket failed.
    Io(io::Error),
    /// The remote end closed the connection.
    Closed,
    /// TLS itself failed: a certificate was refused (by this side, or by the
    /// other, which then sent an alert), or the bytes were not TLS.
    Tls(rustls::Error),
    /// The caller's first bytes are this protocol's plaintext frame magic: a
    /// plaintext caller at a TLS listener.
    PlaintextCaller,
    /// The acceptor answered a ClientHello with a plaintext frame (its
    /// refusal: a plaintext listener, or one at its connection bound). The
    /// bytes received so far are in [`TlsStream::take_received`].
    PlaintextAnswer,
}

/// The first byte of every frame ("RNET"); a TLS record starts with its
/// content type (22 for a handshake).
const FRAME_FIRST_BYTE: u8 = b'R';
/// The first byte of a TLS handshake record (a ClientHello's).
const TLS_HANDSHAKE_CONTENT_TYPE: u8 = 22;

/// Accepts TLS on a socket of a front door whose clients speak another
/// protocol (RESP): runs the handshake. A caller whose bytes are not TLS
/// (a plaintext client at a TLS port) is sent `plaintext_answer` in
/// plaintext first, so that it can tell its user why it was refused.
pub(crate) async fn accept_tls(
    tcp: TcpStream,
    acceptor: std::sync::Arc<rustls::ServerConfig>,
    plaintext_answer: &[u8],
) -> Result<Stream, String> {
    let session = rustls::ServerConnection::new(acceptor).map_err(|error| format!("TLS: {error}"))?;
    let tls = TlsStream::new(tcp, rustls::Connection::Server(session));
    // Looked at before rustls sees the bytes: rustls would answer them
    // with an alert, which a plaintext client cannot read.
    match tls.fill().await {
        Ok(0) => return Err("closed before the TLS handshake".into()),
        Ok(_) => {}
        Err(error) => return Err(format!("reading the TLS handshake: {error}")),
    }
    if tls.first_received_byte() != Some(TLS_HANDSHAKE_CONTENT_TYPE) {
        let _ = tls.tcp.write_all(plaintext_answer.to_vec()).await;
        return Err("a plaintext client at a TLS port".into());
    }
    match tls.handshake().await {
        Ok(()) => Ok(Stream::Tls(Box::new(tls))),
        Err(error) => Err(format!("TLS handshake failed: {error:?}")),
    }
}

/// Ciphertext read from the socket and not yet given to rustls.
///
/// Invariant: `start <= buf.len()`; `buf` is `None` only while a read is in
/// flight (or after one was cancelled, when the next read allocates anew).
struct Received {
    buf: Option<Vec<u8>>,
    start: usize,
}

/// TLS over a tokio-uring socket. The rustls connection is shared by the
/// connection's reading and writing tasks (one thread, borrowed only between
/// awaits); socket writes are serialised by `write_gate`, so records go out
/// in the order rustls produced them even when the reader must answer the
/// remote end (an alert, a key update) while the writer is busy.
pub struct TlsStream {
    tcp: TcpStream,
    session: RefCell<rustls::Connection>,
    received: RefCell<Received>,
    /// Held for the whole of a write; holds the reusable ciphertext buffer.
    write_gate: tokio::sync::Mutex<Vec<u8>>,
}

/// Wraps a rustls error so that it survives the trip through `io::Error`;
/// [`tls_error`] gets it back.
fn io_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// The rustls error inside an I/O error from a [`TlsStream`], if any.
pub(crate) fn tls_error(error: &io::Error) -> Option<rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned()
}

/// What a synchronous pass over the session produced.
enum Pumped {
    /// This many plaintext bytes were appended.
    Data(usize),
    /// The remote end closed its side (with or without close_notify).
    End,
    /// Nothing until more ciphertext arrives.
    NeedRead,
}

impl TlsStream {
    pub(crate) fn new(tcp: TcpStream, mut session: rustls::Connection) -> TlsStream {
        session.set_buffer_limit(Some(TLS_WRITE_CHUNK_BYTES));
        TlsStream {
            tcp,
            session: RefCell::new(session),
            received: RefCell::new(Received { buf: Some(Vec::with_capacity(TLS_READ_SIZE)), start: 0 }),
            write_gate: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The remote end's end-entity certificate, once the handshake verified it.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.session.borrow().peer_certificates().and_then(|chain| chain.first()).map(|c| c.clone().into_owned())
    }

    /// Bytes received and not given to rustls (after
    /// [`TlsHandshakeError::PlaintextAnswer`]: the start of a plaintext frame).
    pub(crate) fn take_received(&self) -> Vec<u8> {
        let mut received = self.received.borrow_mut();
        let start = received.start;
        received.start = 0;
        match received.buf.as_mut() {
            Some(buf) => buf.drain(..).skip(start).collect(),
            None => Vec::new(),
        }
    }

    /// Runs the TLS handshake to completion (both sides).
    pub(crate) async fn handshake(&self) -> Result<(), TlsHandshakeError> {
        let server = matches!(&*self.session.borrow(), rustls::Connection::Server(_));
        let mut first_read = true;
        loop {
            if self.session.borrow().wants_write() {
                self.flush().await.map_err(TlsHandshakeError::Io)?;
            }
            if !self.session.borrow().is_handshaking() {
                return Ok(());
            }
            if self.pending_ciphertext() == 0 {
                match self.fill().await {
                    Ok(0) => return Err(TlsHandshakeError::Closed),
                    Ok(_) => {}
                    Err(error) => return Err(TlsHandshakeError::Io(error)),
                }
            }
            if first_read {
                first_read = false;
                if self.first_received_byte() == Some(FRAME_FIRST_BYTE) {
                    return Err(if server {
                        TlsHandshakeError::PlaintextCaller
                    } else {
                        TlsHandshakeError::PlaintextAnswer
                    });
                }
            }
            match self.feed() {
                Ok(true) => {}
                // rustls takes nothing more: the remote end closed.
                Ok(false) => return Err(TlsHandshakeError::Closed),
                Err(error) => {
                    // rustls queued an alert that tells the other side why.
                    let _ = self.flush().await;
                    return Err(match tls_error(&error) {
                        Some(tls) => TlsHandshakeError::Tls(tls),
                        None => TlsHandshakeError::Io(error),
                    });
                }
            }
        }
    }

    fn first_received_byte(&self) -> Option<u8> {
        let received = self.received.borrow();
        received.buf.as_ref().and_then(|buf| buf.get(received.start).copied())
    }

    fn pending_ciphertext(&self) -> usize {
        let received = self.received.borrow();
        received.buf.as_ref().map_or(0, |buf| buf.len() - received.start)
    }

    /// Reads ciphertext from the socket into the (drained) receive buffer;
    /// at the end of the stream tells rustls so.
    async fn fill(&self) -> io::Result<usize> {
        let mut buf = {
            let mut received = self.received.borrow_mut();
            debug_assert_eq!(received.buf.as_ref().map_or(0, |buf| buf.len() - received.start), 0);
            received.start = 0;
            let mut buf = received.buf.take().unwrap_or_default();
            buf.clear();
            buf.reserve(TLS_READ_SIZE);
            buf
        };
        let capacity = buf.capacity();
        let (result, slice) = self.tcp.read(buf.slice(0..capacity)).await;
        buf = slice.into_inner();
        self.received.borrow_mut().buf = Some(buf);
        let read = result?;
        if read == 0 {
            // An empty read tells rustls the transport ended.
            let _ = self.session.borrow_mut().read_tls(&mut io::empty());
        }
        Ok(read)
    }

    /// Gives rustls the buffered ciphertext it can take and processes it;
    /// returns whether it took any. Stops early when rustls's plaintext
    /// buffer is full (the caller drains it first). Errors carry the rustls
    /// error ([`tls_error`]).
    fn feed(&self) -> io::Result<bool> {
        let mut session = self.session.borrow_mut();
        let mut received = self.received.borrow_mut();
        let Received { buf, start } = &mut *received;
        let Some(buf) = buf.as_ref() else { return Ok(false) };
        let before = *start;
        while *start < buf.len() {
            match session.read_tls(&mut &buf[*start..]) {
                Ok(0) => break,
                Ok(taken) => *start += taken,
                // The received-plaintext buffer is full: read it out first.
                Err(error) if error.kind() == io::ErrorKind::Other => break,
                Err(error) => return Err(error),
            }
            session.process_new_packets().map_err(io_error)?;
        }
        Ok(*start > before)
    }

    /// Moves decrypted bytes into `buf`, up to its spare capacity, feeding
    /// rustls more buffered ciphertext as its plaintext runs out.
    fn pump(&self, buf: &mut BytesMut) -> io::Result<Pumped> {
        let room = buf.capacity() - buf.len();
        let mut appended = 0;
        loop {
            {
                let mut session = self.session.borrow_mut();
                let mut reader = session.reader();
                loop {
                    if appended == room {
                        return Ok(Pumped::Data(appended));
                    }
                    match reader.fill_buf() {
                        Ok([]) => return Ok(if appended > 0 { Pumped::Data(appended) } else { Pumped::End }),
                        Ok(chunk) => {
                            let take = chunk.len().min(room - appended);
                            buf.extend_from_slice(&chunk[..take]);
                            reader.consume(take);
                            appended += take;
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        // The transport ended without close_notify. Frames
                        // are self-delimiting and checksummed, so this can
                        // only cut a connection short (which anyone able to
                        // inject a FIN could do anyway), never forge a frame:
                        // it is an end of stream like plaintext's.
                        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                            return Ok(if appended > 0 { Pumped::Data(appended) } else { Pumped::End })
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            if self.pending_ciphertext() == 0 {
                return Ok(if appended > 0 { Pumped::Data(appended) } else { Pumped::NeedRead });
            }
            if !self.feed()? {
                // rustls takes nothing more (it saw the end of the stream).
                return Ok(if appended > 0 { Pumped::Data(appended) } else { Pumped::End });
            }
        }
    }

    async fn read_append(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        assert!(buf.len() < buf.capacity(), "read_append needs spare capacity");
        loop {
            let pumped = self.pump(&mut buf);
            // Answer what the remote end asked for (a key update, an alert
            // after an error) before anything else.
            if self.session.borrow().wants_write() {
                if let Err(error) = self.flush().await {
                    return (Err(error), buf);
                }
            }
            match pumped {
                Ok(Pumped::Data(read)) => return (Ok(read), buf),
                Ok(Pumped::End) => return (Ok(0), buf),
                Ok(Pumped::NeedRead) => {}
                Err(error) => return (Err(error), buf),
            }
            if let Err(error) = self.fill().await {
                return (Err(error), buf);
            }
        }
    }

    async fn write_segments(&self, mut segments: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        let mut out = self.write_gate.lock().await;
        // Every segment goes to rustls in one vectored call, so it packs
        // them into full-size records: a call per segment made at least one
        // record (an AEAD operation and 22 bytes) per segment, and a
        // coalesced write is often a small head and a long tail per frame.
        let (mut index, mut offset) = (0, 0);
        while index < segments.len() {
            let accepted = {
                let slices: Vec<io::IoSlice<'_>> = std::iter::once(&segments[index][offset..])
                    .chain(segments[index + 1..].iter().map(|segment| &segment[..]))
                    .map(io::IoSlice::new)
                    .collect();
                match self.session.borrow_mut().writer().write_vectored(&slices) {
                    Ok(accepted) => accepted,
                    Err(error) => return (Err(error), segments),
                }
            };
            let mut left = accepted;
            while index < segments.len() && offset + left >= segments[index].len() {
                left -= segments[index].len() - offset;
                (index, offset) = (index + 1, 0);
            }
            offset += left;
            if index < segments.len() {
                // rustls's send buffer is at its limit: write it out.
                match self.drain(&mut out).await {
                    Ok(0) if accepted == 0 => {
                        let error = io::Error::new(io::ErrorKind::WriteZero, "TLS accepted no plaintext");
                        return (Err(error), segments);
                    }
                    Ok(_) => {}
                    Err(error) => return (Err(error), segments),
                }
            }
        }
        let result = self.drain(&mut out).await.map(|_| ());
        segments.clear();
        (result, segments)
    }

    /// Writes out whatever rustls has queued (handshake messages, alerts).
    async fn flush(&self) -> io::Result<()> {
        let mut out = self.write_gate.lock().await;
        self.drain(&mut out).await.map(|_| ())
    }

    /// Moves rustls's queued records into `out` and writes them; returns the
    /// bytes written. The caller holds the write gate.
    async fn drain(&self, out: &mut Vec<u8>) -> io::Result<usize> {
        let mut total = 0;
        loop {
            {
                let mut session = self.session.borrow_mut();
                while session.wants_write() {
                    session.write_tls(out)?;
                }
            }
            if out.is_empty() {
                return Ok(total);
            }
            total += out.len();
            let (result, mut written) = self.tcp.write_all(mem::take(out)).await;
            written.clear();
            *out = written;
            result?;
        }
    }
}
