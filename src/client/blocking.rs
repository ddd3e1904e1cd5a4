//! A [`ClientSession`] driven over a blocking `std::net::TcpStream`, in plaintext or TLS.

use super::session::{ClientOptions, ClientSession};
use super::state::{ClientEvent, SyncState};
use super::tls::ClientTls;
use super::ClientError;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const READ_BUF: usize = 64 * 1024;

/// The socket, in plaintext or under TLS.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.get_ref(),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            // A server that refuses us (or is gone) closes without a close_notify: report it
            // as the close it is.
            Transport::Tls(t) => match t.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// A blocking client: one thread, one connection.
///
/// Pending output (the `Hello`, `Pong`s) is written before every read and right after the
/// bytes that produced it are fed. Events decoded before an error are returned before the
/// error. After the `Goodbye` event has been returned, the next call returns
/// [`ClientError::Goodbye`]; after any other final error the socket is shut and later calls
/// return [`ClientError::Closed`]. [`ClientError::Timeout`] is not final.
#[derive(Debug)]
pub struct BlockingClient {
    stream: Transport,
    session: ClientSession,
    buf: Vec<u8>,
    read_timeout: Option<Duration>,
    /// The read timeout currently set on the socket.
    socket_timeout: Option<Duration>,
    /// A final error met while events were still queued.
    failed: Option<ClientError>,
    /// A final error was returned; the socket is shut.
    done: bool,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_err(e: io::Error) -> ClientError {
    if is_timeout(&e) {
        ClientError::Timeout
    } else if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        ClientError::Tls(t.clone())
    } else {
        ClientError::Io(e)
    }
}

impl BlockingClient {
    /// Connects (trying each address within `opts.connect_timeout`) and sends the `Hello`.
    pub fn connect(addr: impl ToSocketAddrs, opts: ClientOptions) -> Result<Self, ClientError> {
        let stream = Self::open(addr, opts.connect_timeout)?;
        Self::from_stream(stream, opts)
    }

    /// Connects without sending the `Hello`, for tests that send their own first bytes with
    /// [`send_raw`](Self::send_raw).
    pub fn connect_raw(addr: impl ToSocketAddrs, opts: ClientOptions) -> Result<Self, ClientError> {
        let stream = Self::open(addr, opts.connect_timeout)?;
        let mut c = Self::wrap(stream, opts)?;
        c.session.discard_output();
        Ok(c)
    }

    /// Runs the protocol over an already connected stream, sending the `Hello` now (after the
    /// TLS handshake, with `opts.tls`).
    pub fn from_stream(stream: TcpStream, opts: ClientOptions) -> Result<Self, ClientError> {
        let mut c = Self::wrap(stream, opts)?;
        c.flush()?;
        Ok(c)
    }

    fn open(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, ClientError> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tracing::debug!(addr = %a, "connected");
                    return Ok(s);
                }
                Err(e) => {
                    tracing::debug!(addr = %a, error = %e, "connect failed");
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(e) => io_err(e),
            None => ClientError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address resolved to nothing",
            )),
        })
    }

    fn wrap(stream: TcpStream, opts: ClientOptions) -> Result<Self, ClientError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(opts.read_timeout)?;
        stream.set_write_timeout(opts.read_timeout)?;
        let stream = match &opts.tls {
            None => Transport::Plain(stream),
            Some(t) => {
                let conn = ClientTls::from_files(t)?
                    .connection()
                    .map_err(ClientError::Tls)?;
                Transport::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
            }
        };
        Ok(BlockingClient {
            read_timeout: opts.read_timeout,
            socket_timeout: opts.read_timeout,
            stream,
            session: ClientSession::new(opts),
            buf: vec![0; READ_BUF],
            failed: None,
            done: false,
        })
    }

    /// The next event, waiting at most the read timeout for each read.
    pub fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        self.next_event_by(None)
    }

    /// The next event, waiting at most `timeout` in all.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<ClientEvent, ClientError> {
        self.next_event_by(Some(Instant::now() + timeout))
    }

    fn next_event_by(&mut self, deadline: Option<Instant>) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(ev) = self.session.poll_event() {
                return Ok(ev);
            }
            if let Some((reason, message)) = self.session.goodbye() {
                let e = ClientError::Goodbye {
                    reason,
                    message: message.to_owned(),
                };
                self.close();
                return Err(e);
            }
            if let Some(e) = self.failed.take() {
                self.close();
                return Err(e);
            }
            if self.done {
                return Err(self.session.closed_error());
            }
            if let Err(e) = self.flush() {
                return Err(self.fail(e));
            }
            self.set_timeout(deadline)?;
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => {
                    let e = self.session.closed_error();
                    tracing::debug!(error = %e, "peer closed");
                    return Err(self.fail(e));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(ClientError::Timeout),
                Err(e) => return Err(self.fail(io_err(e))),
            };
            if let Err(e) = self.session.feed(&self.buf[..n]) {
                // Deliver the events decoded before the error first.
                self.failed = Some(e);
                continue;
            }
            if let Err(e) = self.flush() {
                // A server that said goodbye may already be gone: not worth an error.
                if self.session.goodbye().is_none() {
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Marks the connection failed and returns `e`.
    fn fail(&mut self, e: ClientError) -> ClientError {
        self.close();
        e
    }

    fn close(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.stream.tcp().shutdown(Shutdown::Both);
        }
    }

    fn set_timeout(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let want = match deadline {
            None => self.read_timeout,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Timeout);
                }
                Some(self.read_timeout.map_or(left, |t| t.min(left)))
            }
        };
        if want != self.socket_timeout {
            self.stream.tcp().set_read_timeout(want)?;
            self.socket_timeout = want;
        }
        Ok(())
    }

    /// Writes all pending output.
    fn flush(&mut self) -> Result<(), ClientError> {
        while self.session.has_output() {
            match self.stream.write(self.session.pending_output()) {
                Ok(0) => return Err(ClientError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.session.advance_output(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    /// Reads events until `done(state)` holds, for at most `timeout`. Events are consumed.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&SyncState) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while !done(self.session.state()) {
            self.next_event_by(Some(deadline))?;
        }
        Ok(())
    }

    /// Until the snapshot is complete and the status is `InSync`.
    pub fn run_until_in_sync(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.run_until(timeout, SyncState::is_in_sync)
    }

    /// Until the snapshot is complete and the client has sequence number `seq` or later.
    pub fn run_until_seq(&mut self, seq: u64, timeout: Duration) -> Result<(), ClientError> {
        self.run_until(timeout, |s| s.snapshot_complete() && s.seq() >= seq)
    }

    pub fn state(&self) -> &SyncState {
        self.session.state()
    }

    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Writes pending output, then `bytes` as they are (for tests that send garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.done {
            return Err(self.session.closed_error());
        }
        self.session.queue_raw(bytes);
        self.flush()
    }

    /// Flushes what is pending (best effort) and closes both directions.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        if self.done {
            return Ok(());
        }
        let flushed = self.flush();
        if let Transport::Tls(t) = &mut self.stream {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
        self.done = true;
        match self.stream.tcp().shutdown(Shutdown::Both) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(ClientError::Io(e)),
            _ => flushed,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().peer_addr()
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Transport::Tls(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Tracking;
    use crate::model::{Entry, StateMap, SyncStatus, SyncerType, Update, UpdateType};
    use crate::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions};
    use crate::proto::{
        self, ClientMessage, FrameDecoder, GoodbyeReason, ServerHello, ServerMessage,
        PROTOCOL_VERSION,
    };
    use bytes::Bytes;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    fn server_hello() -> Bytes {
        proto::encode_frame(&ServerMessage::ServerHello(ServerHello {
            protocol_version: PROTOCOL_VERSION,
            server_id: "srv".into(),
            connection_id: 1,
            syncer_type: "felix".into(),
            compression: None,
        }))
    }

    fn snapshot(seq: u64, status: SyncStatus) -> Vec<u8> {
        let mut m = StateMap::new();
        for i in 0..5 {
            m.insert(
                format!("/calico/v1/host/n{i}/config/x").into(),
                Arc::new(Entry {
                    value: format!("v{i}").into(),
                    revision: "1".into(),
                }),
            );
        }
        let snap = encode_snapshot(&m, seq, status, SyncerType::Felix, None, 40);
        snap.frames.concat()
    }

    fn updates(first: u64, last: u64) -> Bytes {
        let u = Update {
            key: "/calico/v1/host/n9/config/x".into(),
            value: Some("new".into()),
            revision: "2".into(),
            update_type: UpdateType::New,
        };
        let opts = EncodeOptions {
            codec: None,
            ..Default::default()
        };
        encode_batch_part(first, last, 0, &[&u], Some(SyncStatus::InSync), &opts)
            .unwrap()
            .plain()
            .clone()
    }

    /// Reads one client frame from `s`.
    fn read_client_frame(s: &mut TcpStream, dec: &mut FrameDecoder) -> ClientMessage {
        let mut got = None;
        let mut b = [0u8; 1];
        while got.is_none() {
            let n = s.read(&mut b).unwrap();
            assert_eq!(n, 1, "client closed");
            dec.feed(&b, |p| -> Result<(), ()> {
                got = Some(proto::decode_client_message(p).unwrap());
                Ok(())
            })
            .unwrap();
        }
        got.unwrap()
    }

    /// A one-connection server running `script` on its own thread.
    fn serve(
        script: impl FnOnce(TcpStream) + Send + 'static,
    ) -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            script(s)
        });
        (addr, h)
    }

    fn opts() -> ClientOptions {
        ClientOptions {
            hostname: "node-7".into(),
            read_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        }
    }

    #[test]
    fn syncs_answers_pings_and_reports_goodbye() {
        let (addr, server) = serve(|mut s| {
            let mut dec = FrameDecoder::new(proto::MAX_CLIENT_FRAME);
            match read_client_frame(&mut s, &mut dec) {
                ClientMessage::Hello(h) => {
                    assert_eq!(h.hostname, "node-7");
                    assert_eq!(h.protocol_version, PROTOCOL_VERSION);
                }
                m => panic!("want Hello, got {m:?}"),
            }
            s.write_all(&server_hello()).unwrap();
            s.write_all(&snapshot(4, SyncStatus::ResyncInProgress))
                .unwrap();
            s.write_all(&proto::ping_frame(99, 0)).unwrap();
            assert_eq!(
                read_client_frame(&mut s, &mut dec),
                ClientMessage::Pong { id: 99 }
            );
            s.write_all(&updates(5, 6)).unwrap();
            s.write_all(&proto::goodbye_frame(GoodbyeReason::Rebalancing, "move"))
                .unwrap();
        });
        let mut c = BlockingClient::connect(addr, opts()).unwrap();
        c.run_until_in_sync(Duration::from_secs(10)).unwrap();
        assert_eq!(c.state().len(), 6);
        assert_eq!(c.state().seq(), 6);
        assert_eq!(
            c.state().get("/calico/v1/host/n9/config/x").unwrap().value,
            b"new"
        );
        // Whatever was not consumed by run_until_in_sync is still queued, then the Goodbye.
        let mut last = None;
        loop {
            match c.next_event() {
                Ok(ev) => last = Some(ev),
                Err(e) => {
                    assert!(
                        matches!(&e, ClientError::Goodbye { reason: GoodbyeReason::Rebalancing, message } if message == "move"),
                        "{e:?}"
                    );
                    break;
                }
            }
        }
        assert!(matches!(last, Some(ClientEvent::Goodbye { .. })));
        assert!(matches!(c.next_event(), Err(ClientError::Goodbye { .. })));
        server.join().unwrap();
    }

    #[test]
    fn gap_from_a_real_socket_is_a_protocol_error() {
        let (addr, server) = serve(|mut s| {
            let mut dec = FrameDecoder::new(proto::MAX_CLIENT_FRAME);
            read_client_frame(&mut s, &mut dec);
            s.write_all(&server_hello()).unwrap();
            s.write_all(&snapshot(4, SyncStatus::InSync)).unwrap();
            s.write_all(&updates(6, 6)).unwrap();
            // Wait for the client to hang up.
            let _ = s.read(&mut [0u8; 16]);
        });
        let mut c = BlockingClient::connect(
            addr,
            ClientOptions {
                tracking: Tracking::SeqOnly,
                ..opts()
            },
        )
        .unwrap();
        let e = c.run_until_seq(6, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.contains("gap")),
            "{e:?}"
        );
        assert_eq!(c.state().seq(), 4);
        assert!(matches!(c.next_event(), Err(ClientError::Closed { .. })));
        server.join().unwrap();
    }

    #[test]
    fn close_mid_frame_reports_buffered_bytes() {
        let (addr, server) = serve(|mut s| {
            let mut dec = FrameDecoder::new(proto::MAX_CLIENT_FRAME);
            read_client_frame(&mut s, &mut dec);
            let h = server_hello();
            s.write_all(&h).unwrap();
            s.write_all(&h[..5]).unwrap();
        });
        let mut c = BlockingClient::connect(addr, opts()).unwrap();
        assert!(matches!(c.next_event(), Ok(ClientEvent::ServerHello(_))));
        let e = c.next_event().unwrap_err();
        assert!(matches!(e, ClientError::Closed { buffered: 5 }), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn silence_times_out_and_raw_bytes_go_out() {
        let (addr, server) = serve(|mut s| {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"junk");
            // Then the client shuts down.
            assert_eq!(s.read(&mut b).unwrap(), 0);
        });
        let mut c = BlockingClient::connect_raw(addr, opts()).unwrap();
        c.send_raw(b"junk").unwrap();
        let t = Instant::now();
        let e = c.run_until_in_sync(Duration::from_millis(200)).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(5));
        c.shutdown().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn connect_refused_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(BlockingClient::connect(addr, opts()).is_err());
    }
}
