//! `typha-loadtest bare-writer`: the floor of the comparison. A single-threaded mio server that
//! accepts subscriber sockets and, for every 16-byte tick read from its control connection,
//! stamps a pre-built message of `--msg-bytes` bytes and writes it to every socket. Nothing
//! else: no protocol, no coalescing (a socket that cannot take a whole message keeps a queue of
//! shared [`Bytes`] and an offset into the first, and gets one `write` per message), no
//! user-space copy per subscriber. Its CPU per delivery is the cost of the syscalls.

use super::wire::{write_head, BARE_HELLO, HEAD};
use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Messages a socket may have queued before it is dropped as too slow (bounds memory).
const MAX_QUEUED: usize = 100_000;
/// As typha's default `--server-listen-backlog` (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
const LISTENER: Token = Token(usize::MAX - 1);
const CONTROL_LISTENER: Token = Token(usize::MAX - 2);
const CONTROL: Token = Token(usize::MAX - 3);

#[derive(Debug, Clone, clap::Args)]
pub struct BareWriterArgs {
    /// Subscribers connect here (loopback).
    #[arg(long)]
    pub port: u16,
    /// The publisher connects here and sends 16-byte ticks (stamp, sequence number).
    #[arg(long)]
    pub control_port: u16,
    /// Size of each message.
    #[arg(long)]
    pub msg_bytes: usize,
}

struct Subscriber {
    stream: TcpStream,
    queue: VecDeque<Bytes>,
    /// Bytes of `queue[0]` already written.
    offset: usize,
}

enum WriteOutcome {
    Done,
    Blocked,
    Failed,
}

impl Subscriber {
    /// Writes the queue front to back, one `write` per message, until empty or `WouldBlock`.
    fn drain(&mut self) -> WriteOutcome {
        while let Some(front) = self.queue.front() {
            match self.stream.write(&front[self.offset..]) {
                Ok(0) => return WriteOutcome::Failed,
                Ok(n) => {
                    self.offset += n;
                    if self.offset == front.len() {
                        self.queue.pop_front();
                        self.offset = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return WriteOutcome::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return WriteOutcome::Failed,
            }
        }
        WriteOutcome::Done
    }
}

struct Writer {
    poll: Poll,
    listener: TcpListener,
    control_listener: TcpListener,
    control: Option<TcpStream>,
    tick: Vec<u8>,
    template: Bytes,
    subs: Slab<Subscriber>,
}

pub fn main(args: BareWriterArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-writer: {e}");
            ExitCode::from(2)
        }
    }
}

/// A listener with a backlog deep enough for a connect storm: a shallow one (std's and mio's
/// 128) overflows, and a subscriber whose handshake the kernel then drops believes it is
/// connected while the writer never sees it (it sends nothing that would reveal the loss).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(TcpListener::from_std(s.into()))
}

fn run(args: &BareWriterArgs) -> io::Result<()> {
    if args.msg_bytes < HEAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--msg-bytes must be at least {HEAD}"),
        ));
    }
    let _ = typha_loadtest_common::sys::raise_nofile_limit();
    let poll = Poll::new()?;
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut listener = listen(addr(args.port))?;
    let mut control_listener = listen(addr(args.control_port))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut control_listener, CONTROL_LISTENER, Interest::READABLE)?;
    let template: Vec<u8> = (0..args.msg_bytes).map(|i| (i * 131 + 7) as u8).collect();
    let mut w = Writer {
        poll,
        listener,
        control_listener,
        control: None,
        tick: Vec::with_capacity(HEAD * 64),
        template: Bytes::from(template),
        subs: Slab::new(),
    };
    w.run()
}

impl Writer {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept()?,
                    CONTROL_LISTENER => self.accept_control()?,
                    CONTROL => self.read_control(&mut scratch),
                    Token(i) => {
                        if ev.is_readable() {
                            self.read_subscriber(i, &mut scratch);
                        }
                        if ev.is_writable() {
                            self.write_subscriber(i);
                        }
                    }
                }
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.subs.vacant_entry();
                    let key = entry.key();
                    self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let mut s = Subscriber {
                        stream,
                        queue: VecDeque::new(),
                        offset: 0,
                    };
                    s.queue.push_back(Bytes::from_static(&[BARE_HELLO]));
                    let ok = !matches!(s.drain(), WriteOutcome::Failed);
                    entry.insert(s);
                    if !ok {
                        self.drop_subscriber(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors and the like: keep serving those already accepted.
                Err(e) => {
                    eprintln!("bare-writer: accept failed: {e}");
                    return Ok(());
                }
            }
        }
    }

    fn accept_control(&mut self) -> io::Result<()> {
        loop {
            match self.control_listener.accept() {
                Ok((mut stream, _)) => {
                    if self.control.is_some() {
                        continue; // one publisher at a time; the extra one is closed
                    }
                    self.poll
                        .registry()
                        .register(&mut stream, CONTROL, Interest::READABLE)?;
                    self.tick.clear();
                    self.control = Some(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("bare-writer: accept failed: {e}");
                    return Ok(());
                }
            }
        }
    }

    fn read_control(&mut self, scratch: &mut [u8]) {
        loop {
            let Some(control) = self.control.as_mut() else {
                return;
            };
            match control.read(scratch) {
                Ok(0) => {
                    // The publisher is done; the subscribers stay until the harness stops us.
                    if let Some(mut c) = self.control.take() {
                        let _ = self.poll.registry().deregister(&mut c);
                    }
                    return;
                }
                Ok(n) => {
                    self.tick.extend_from_slice(&scratch[..n]);
                    let whole = self.tick.len() / HEAD * HEAD;
                    for k in (0..whole).step_by(HEAD) {
                        let mut h = [0u8; HEAD];
                        h.copy_from_slice(&self.tick[k..k + HEAD]);
                        self.publish(&h);
                    }
                    self.tick.drain(..whole);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if let Some(mut c) = self.control.take() {
                        let _ = self.poll.registry().deregister(&mut c);
                    }
                    return;
                }
            }
        }
    }

    /// One message: a copy of the template with the tick's stamp and sequence number, shared by
    /// every socket.
    fn publish(&mut self, head: &[u8; HEAD]) {
        let mut m = BytesMut::from(&self.template[..]);
        let stamp = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        let seq = u64::from_le_bytes(head[8..].try_into().unwrap_or([0; 8]));
        write_head(&mut m, stamp, seq);
        let msg = m.freeze();
        let mut dead = Vec::new();
        for (key, s) in self.subs.iter_mut() {
            if s.queue.len() >= MAX_QUEUED {
                dead.push(key);
                continue;
            }
            s.queue.push_back(msg.clone());
            if s.queue.len() == 1 && matches!(s.drain(), WriteOutcome::Failed) {
                dead.push(key);
            }
        }
        for key in dead {
            self.drop_subscriber(key);
        }
    }

    fn read_subscriber(&mut self, key: usize, scratch: &mut [u8]) {
        let Some(s) = self.subs.get_mut(key) else {
            return;
        };
        loop {
            match s.stream.read(scratch) {
                Ok(0) => return self.drop_subscriber(key),
                Ok(_) => {} // subscribers have nothing to say; ignored
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_subscriber(key),
            }
        }
    }

    fn write_subscriber(&mut self, key: usize) {
        if let Some(s) = self.subs.get_mut(key) {
            if matches!(s.drain(), WriteOutcome::Failed) {
                self.drop_subscriber(key);
            }
        }
    }

    fn drop_subscriber(&mut self, key: usize) {
        if self.subs.contains(key) {
            let mut s = self.subs.remove(key);
            let _ = self.poll.registry().deregister(&mut s.stream);
        }
    }
}
