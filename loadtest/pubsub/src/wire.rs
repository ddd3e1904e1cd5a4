//! Minimal subscriber-side parsers of the three comparison protocols (Redis RESP2 push messages,
//! the NATS client protocol, the bare writer's fixed-size stream), typha-rs' native protocol
//! through [`ClientSession`] and Felix's protocol through [`FelixClientSession`]. Each is "bytes in, events out", takes input split at any point, and keeps
//! only the first [`HEAD`] bytes of a payload: the stamp and sequence number are all the harness
//! needs, so an 8 KiB message costs no copy beyond the kernel's.

use std::fmt;
use typha::client::{ClientEvent, ClientOptions, ClientSession, Tracking};
use typha::datastore::sim::{parse_payload_head, PAYLOAD_KEY};
use typha::model::{SyncStatus, SyncerType};
use typha::proto::typha::{
    FelixClientConfig, FelixClientEvent, FelixClientSession, SYNCER_FELIX, SYNC_STATUS_IN_SYNC,
};

/// Bytes at the start of every message: the send time (Unix nanoseconds) and the sequence
/// number, both u64 little-endian.
pub const HEAD: usize = 16;
/// Longest protocol line accepted (a NATS `INFO` line is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;
/// The channel / subject every subscriber listens on.
pub const CHANNEL: &str = "typha.bench";

/// What a subscriber's stream says, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEvent {
    /// The subscription is confirmed: messages published from now on reach this subscriber.
    Subscribed,
    /// `count` messages ending at sequence number `seq`, the oldest sent at `stamp` (Unix ns).
    Message { stamp: u64, seq: u64, count: u64 },
}

/// Writes the stamp and sequence number into the first [`HEAD`] bytes of `payload`.
pub fn write_head(payload: &mut [u8], stamp: u64, seq: u64) {
    payload[..8].copy_from_slice(&stamp.to_le_bytes());
    payload[8..HEAD].copy_from_slice(&seq.to_le_bytes());
}

fn read_head(head: &[u8; HEAD]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&head[..8]);
    b.copy_from_slice(&head[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

/// A subscriber's protocol state.
pub trait Wire: Send {
    /// Queues on `out` what the subscriber sends once connected.
    fn start(&mut self, out: &mut Vec<u8>);
    /// Consumes `data`; replies (PONGs) go to `out`, what it says to `events`. An error ends the
    /// connection.
    fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String>;
}

/// One protocol line, accumulated across reads.
#[derive(Debug, Default)]
struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    /// Takes bytes up to and including `\n`: `(consumed, Some(line without CRLF))` when the line
    /// is complete.
    fn push(&mut self, data: &[u8]) -> Result<(usize, bool), String> {
        let (take, done) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (data.len(), false),
        };
        if self.buf.len() + take > MAX_LINE {
            return Err(format!("protocol line longer than {MAX_LINE} bytes"));
        }
        self.buf.extend_from_slice(&data[..take]);
        if done && !self.buf.ends_with(b"\r\n") {
            return Err("protocol line not ended by CRLF".into());
        }
        Ok((take, done))
    }

    fn line(&self) -> &[u8] {
        &self.buf[..self.buf.len().saturating_sub(2)]
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 1024 {
            self.buf.shrink_to(256);
        }
    }
}

/// A payload of known length followed by a fixed trailer; keeps its first [`HEAD`] bytes.
#[derive(Debug, Clone, Copy)]
struct Body {
    len: usize,
    pos: usize,
    head: [u8; HEAD],
}

impl Body {
    fn new(len: usize) -> Self {
        Body {
            len,
            pos: 0,
            head: [0; HEAD],
        }
    }

    /// Consumes from `data`; `(consumed, done)`.
    fn take(&mut self, data: &[u8], trailer: &[u8]) -> Result<(usize, bool), String> {
        let total = self.len + trailer.len();
        let n = (total - self.pos).min(data.len());
        let end = self.pos + n;
        let head_end = HEAD.min(self.len);
        if self.pos < head_end {
            let k = (head_end - self.pos).min(n);
            self.head[self.pos..self.pos + k].copy_from_slice(&data[..k]);
        }
        // The rest of the payload is not looked at; only the trailer is checked.
        for p in self.pos.max(self.len)..end {
            if data[p - self.pos] != trailer[p - self.len] {
                return Err("payload not followed by its CRLF".into());
            }
        }
        self.pos = end;
        Ok((n, end == total))
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.len == s.len() && s.len() <= HEAD && &self.head[..s.len()] == s
    }

    fn message(&self) -> Result<WireEvent, String> {
        if self.len < HEAD {
            return Err(format!("message of {} bytes has no stamp", self.len));
        }
        let (stamp, seq) = read_head(&self.head);
        Ok(WireEvent::Message {
            stamp,
            seq,
            count: 1,
        })
    }
}

fn parse_int(s: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(s)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushKind {
    Unknown,
    Message,
    Subscribe,
    Other,
}

/// Redis RESP2 as a subscribed client sees it: `*3` arrays of `subscribe` confirmations and
/// `message` pushes (`$7 message`, `$N channel`, `$N payload`).
#[derive(Debug)]
pub struct RespWire {
    line: LineBuf,
    body: Option<Body>,
    /// Elements left in the current array (0: at top level).
    array_left: usize,
    elem: usize,
    kind: PushKind,
    payload: Option<Body>,
}

impl Default for RespWire {
    fn default() -> Self {
        RespWire {
            line: LineBuf::default(),
            body: None,
            array_left: 0,
            elem: 0,
            kind: PushKind::Unknown,
            payload: None,
        }
    }
}

impl RespWire {
    fn element_done(
        &mut self,
        body: Option<Body>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        if self.array_left == 0 {
            return Ok(()); // a top-level reply: nothing a subscriber needs
        }
        match self.elem {
            0 => {
                self.kind = match body {
                    Some(b) if b.starts_with(b"message") => PushKind::Message,
                    Some(b) if b.starts_with(b"subscribe") => PushKind::Subscribe,
                    _ => PushKind::Other,
                }
            }
            2 => self.payload = body,
            _ => {}
        }
        self.elem += 1;
        self.array_left -= 1;
        if self.array_left == 0 {
            match self.kind {
                PushKind::Message => match self.payload.take() {
                    Some(p) => events.push(p.message()?),
                    None => return Err("message push without a payload".into()),
                },
                PushKind::Subscribe => events.push(WireEvent::Subscribed),
                PushKind::Unknown | PushKind::Other => {}
            }
            self.payload = None;
        }
        Ok(())
    }

    fn line_done(&mut self, events: &mut Vec<WireEvent>) -> Result<(), String> {
        let line = self.line.line();
        let (&t, rest) = line.split_first().ok_or("empty RESP line")?;
        match t {
            b'*' => {
                if self.array_left > 0 {
                    return Err("nested RESP array".into());
                }
                let n = parse_int(rest)?;
                if n > 0 {
                    self.array_left = n as usize;
                    self.elem = 0;
                    self.kind = PushKind::Unknown;
                }
            }
            b'$' => {
                let n = parse_int(rest)?;
                if n < 0 {
                    self.element_done(None, events)?;
                } else {
                    self.body = Some(Body::new(n as usize));
                }
            }
            b':' | b'+' => self.element_done(None, events)?,
            b'-' => return Err(format!("server error: {}", String::from_utf8_lossy(rest))),
            _ => return Err(format!("unexpected RESP type byte {t:#04x}")),
        }
        Ok(())
    }
}

impl Wire for RespWire {
    fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
                CHANNEL.len()
            )
            .as_bytes(),
        );
    }

    fn feed(
        &mut self,
        mut data: &[u8],
        _out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        while !data.is_empty() {
            if let Some(body) = self.body.as_mut() {
                let (n, done) = body.take(data, b"\r\n")?;
                data = &data[n..];
                if done {
                    let b = self.body.take();
                    self.element_done(b, events)?;
                }
            } else {
                let (n, done) = self.line.push(data)?;
                data = &data[n..];
                if done {
                    let r = self.line_done(events);
                    self.line.clear();
                    r?;
                }
            }
        }
        Ok(())
    }
}

/// The NATS client protocol: `INFO`, `MSG subject sid [reply] len` + payload, `PING` (answered
/// with `PONG`), `+OK`, `-ERR`. The subscription counts as confirmed at the first `PONG`, the
/// answer to the `PING` sent after `SUB` (the server handles a connection's input in order).
#[derive(Debug, Default)]
pub struct NatsWire {
    line: LineBuf,
    body: Option<Body>,
    subscribed: bool,
}

impl NatsWire {
    fn line_done(&mut self, out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<(), String> {
        let line = self.line.line();
        let op_end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let op = line[..op_end].to_ascii_uppercase();
        match op.as_slice() {
            b"MSG" => {
                let last = line[op_end..]
                    .split(|&b| b == b' ' || b == b'\t')
                    .rfind(|t| !t.is_empty())
                    .ok_or("MSG without a length")?;
                let n = parse_int(last)?;
                if n < 0 {
                    return Err("negative MSG length".into());
                }
                self.body = Some(Body::new(n as usize));
            }
            b"PING" => out.extend_from_slice(b"PONG\r\n"),
            b"PONG" => {
                if !self.subscribed {
                    self.subscribed = true;
                    events.push(WireEvent::Subscribed);
                }
            }
            b"INFO" | b"+OK" => {}
            b"-ERR" => {
                return Err(format!(
                    "server error: {}",
                    String::from_utf8_lossy(&line[op_end..]).trim()
                ))
            }
            _ => {
                return Err(format!(
                    "unexpected NATS operation {:?}",
                    String::from_utf8_lossy(&line[..op_end.min(32)])
                ))
            }
        }
        Ok(())
    }
}

impl Wire for NatsWire {
    fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"typha-loadtest\"}}\r\n\
                 SUB {CHANNEL} 1\r\nPING\r\n"
            )
            .as_bytes(),
        );
    }

    fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        while !data.is_empty() {
            if let Some(body) = self.body.as_mut() {
                let (n, done) = body.take(data, b"\r\n")?;
                data = &data[n..];
                if done {
                    if let Some(b) = self.body.take() {
                        events.push(b.message()?);
                    }
                }
            } else {
                let (n, done) = self.line.push(data)?;
                data = &data[n..];
                if done {
                    let r = self.line_done(out, events);
                    self.line.clear();
                    r?;
                }
            }
        }
        Ok(())
    }
}

/// The bare writer's stream: one `+` when the writer has accepted the socket, then messages of
/// exactly `msg_bytes` bytes back to back.
#[derive(Debug)]
pub struct BareWire {
    msg_bytes: usize,
    accepted: bool,
    body: Body,
}

/// What the bare writer sends first on every accepted socket.
pub const BARE_HELLO: u8 = b'+';

impl BareWire {
    pub fn new(msg_bytes: usize) -> Self {
        BareWire {
            msg_bytes,
            accepted: false,
            body: Body::new(msg_bytes),
        }
    }
}

impl Wire for BareWire {
    fn start(&mut self, _out: &mut Vec<u8>) {}

    fn feed(
        &mut self,
        mut data: &[u8],
        _out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        if !self.accepted {
            match data.split_first() {
                None => return Ok(()),
                Some((&BARE_HELLO, rest)) => {
                    self.accepted = true;
                    events.push(WireEvent::Subscribed);
                    data = rest;
                }
                Some((b, _)) => return Err(format!("bare writer sent {b:#04x} before '+'")),
            }
        }
        while !data.is_empty() {
            let (n, done) = self.body.take(data, b"")?;
            data = &data[n..];
            if done {
                events.push(self.body.message()?);
                self.body = Body::new(self.msg_bytes);
            }
        }
        Ok(())
    }
}

/// A real typha protocol client (sequence numbers only). A message is a batch; its stamp is the
/// batch's `received_at` (when the update reached the daemon), as the load test's lag uses.
pub struct TyphaWire {
    session: ClientSession,
    /// Highest sequence number seen (from the snapshot, then from `Updates`).
    seq: u64,
    snapshot_done: bool,
    subscribed: bool,
}

impl fmt::Debug for TyphaWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TyphaWire")
            .field("seq", &self.seq)
            .field("subscribed", &self.subscribed)
            .finish()
    }
}

impl TyphaWire {
    pub fn new(idx: usize) -> Self {
        TyphaWire {
            session: ClientSession::new(ClientOptions {
                hostname: format!("typha-pubsub-{idx}"),
                client_info: concat!("typha-loadtest pubsub ", env!("CARGO_PKG_VERSION"))
                    .to_owned(),
                syncer_type: SyncerType::Felix,
                accept_compression: Vec::new(),
                answer_pings: true,
                tracking: Tracking::SeqOnly,
                ..ClientOptions::default()
            }),
            seq: 0,
            snapshot_done: false,
            subscribed: false,
        }
    }

    fn move_output(&mut self, out: &mut Vec<u8>) {
        while self.session.has_output() {
            let p = self.session.pending_output();
            out.extend_from_slice(p);
            let n = p.len();
            self.session.advance_output(n);
        }
    }
}

impl Wire for TyphaWire {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.move_output(out);
    }

    fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        let fed = self.session.feed(data);
        while let Some(ev) = self.session.poll_event() {
            let in_sync = match ev {
                ClientEvent::SnapshotComplete { seq, status, .. } => {
                    self.snapshot_done = true;
                    self.seq = self.seq.max(seq);
                    status == SyncStatus::InSync
                }
                ClientEvent::Status(SyncStatus::InSync) => self.snapshot_done,
                ClientEvent::Updates {
                    first_seq,
                    last_seq,
                    received_at,
                    ..
                } => {
                    // A frame may overlap what the snapshot already covered.
                    let from = first_seq.max(self.seq + 1);
                    if last_seq >= from {
                        events.push(WireEvent::Message {
                            stamp: received_at,
                            seq: last_seq,
                            count: last_seq - from + 1,
                        });
                        self.seq = last_seq;
                    }
                    false
                }
                ClientEvent::Goodbye { reason, message } => {
                    return Err(format!("goodbye {}: {message}", reason.as_str()))
                }
                _ => false,
            };
            if in_sync && !self.subscribed {
                self.subscribed = true;
                events.push(WireEvent::Subscribed);
            }
        }
        self.move_output(out);
        fed.map_err(|e| e.to_string())
    }
}

/// A Felix-protocol client as Calico's Felix opens one (decoder restart, snappy, modern policy
/// keys) that keeps no map. Typha's messages carry neither a timestamp nor a sequence number,
/// so a message is a rewrite of the sim's payload key and its stamp and number are read from
/// the value's head ([`parse_payload_head`]): the stamp is when the sim wrote it, a few
/// microseconds before the native wire's `received_at`.
pub struct FelixWire {
    session: FelixClientSession,
    /// Highest payload number seen.
    seq: u64,
    subscribed: bool,
}

impl FelixWire {
    pub fn new(idx: usize) -> Self {
        FelixWire {
            session: FelixClientSession::new(FelixClientConfig::felix(
                &format!("typha-pubsub-felix-{idx}"),
                SYNCER_FELIX,
                idx as u64,
            )),
            seq: 0,
            subscribed: false,
        }
    }

    fn move_output(&mut self, out: &mut Vec<u8>) {
        if self.session.has_outbound() {
            out.extend_from_slice(&self.session.take_outbound());
        }
    }
}

impl Wire for FelixWire {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.move_output(out);
    }

    fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<WireEvent>,
    ) -> Result<(), String> {
        self.session.feed(data);
        while let Some(ev) = self.session.poll_event().map_err(|e| e.to_string())? {
            match ev {
                FelixClientEvent::SyncStatus(SYNC_STATUS_IN_SYNC) if !self.subscribed => {
                    self.subscribed = true;
                    events.push(WireEvent::Subscribed);
                }
                FelixClientEvent::Kvs(kvs) => {
                    for u in kvs.iter().filter(|u| u.key == PAYLOAD_KEY) {
                        let Some(value) = &u.value else {
                            return Err("the payload key was deleted".into());
                        };
                        let (stamp, seq) = parse_payload_head(value)
                            .ok_or("a payload value without its stamp and number")?;
                        // The snapshot may hold a payload; only rewrites after it count, and
                        // a coalesced batch counts the rewrites it stands for.
                        if self.subscribed && seq > self.seq {
                            events.push(WireEvent::Message {
                                stamp,
                                seq,
                                count: seq - self.seq,
                            });
                        }
                        self.seq = self.seq.max(seq);
                    }
                }
                _ => {}
            }
        }
        self.move_output(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize, stamp: u64, seq: u64) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        write_head(&mut p, stamp, seq);
        p
    }

    fn resp_stream() -> (Vec<u8>, Vec<WireEvent>) {
        let mut s = Vec::new();
        s.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$11\r\ntypha.bench\r\n:1\r\n");
        let mut want = vec![WireEvent::Subscribed];
        for (seq, len) in [(1u64, 16usize), (2, 100), (3, 8192), (4, 17)] {
            let p = payload(len, 1000 + seq, seq);
            s.extend_from_slice(
                format!("*3\r\n$7\r\nmessage\r\n$11\r\ntypha.bench\r\n${len}\r\n").as_bytes(),
            );
            s.extend_from_slice(&p);
            s.extend_from_slice(b"\r\n");
            want.push(WireEvent::Message {
                stamp: 1000 + seq,
                seq,
                count: 1,
            });
        }
        // A payload that itself contains CRLF and '*' must not confuse the parser.
        let mut p = payload(40, 7, 5);
        p[20..24].copy_from_slice(b"\r\n*3");
        s.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$11\r\ntypha.bench\r\n$40\r\n");
        s.extend_from_slice(&p);
        s.extend_from_slice(b"\r\n");
        want.push(WireEvent::Message {
            stamp: 7,
            seq: 5,
            count: 1,
        });
        (s, want)
    }

    fn nats_stream() -> (Vec<u8>, Vec<WireEvent>, Vec<u8>) {
        let mut s = Vec::new();
        s.extend_from_slice(
            b"INFO {\"server_id\":\"X\",\"version\":\"2.9.10\",\"max_payload\":1048576}\r\n",
        );
        s.extend_from_slice(b"PONG\r\n");
        let mut want = vec![WireEvent::Subscribed];
        for (seq, len) in [(1u64, 16usize), (2, 512), (3, 8192)] {
            let p = payload(len, 50 + seq, seq);
            s.extend_from_slice(format!("MSG typha.bench 1 {len}\r\n").as_bytes());
            s.extend_from_slice(&p);
            s.extend_from_slice(b"\r\n");
            want.push(WireEvent::Message {
                stamp: 50 + seq,
                seq,
                count: 1,
            });
        }
        s.extend_from_slice(b"PING\r\n");
        // With a reply subject, the length is the last field.
        let p = payload(20, 9, 4);
        s.extend_from_slice(b"MSG typha.bench 1 _INBOX.x 20\r\n");
        s.extend_from_slice(&p);
        s.extend_from_slice(b"\r\n");
        want.push(WireEvent::Message {
            stamp: 9,
            seq: 4,
            count: 1,
        });
        s.extend_from_slice(b"PONG\r\n");
        (s, want, b"PONG\r\n".to_vec())
    }

    fn bare_stream(len: usize) -> (Vec<u8>, Vec<WireEvent>) {
        let mut s = vec![BARE_HELLO];
        let mut want = vec![WireEvent::Subscribed];
        for seq in 1..=4u64 {
            s.extend_from_slice(&payload(len, 77 * seq, seq));
            want.push(WireEvent::Message {
                stamp: 77 * seq,
                seq,
                count: 1,
            });
        }
        (s, want)
    }

    /// Feeds `stream` split into two pieces at every position, and into 1-byte pieces.
    fn check_splits<W: Wire>(
        new: impl Fn() -> W,
        stream: &[u8],
        want: &[WireEvent],
        want_out: &[u8],
    ) {
        let run = |pieces: Vec<&[u8]>| {
            let mut w = new();
            let (mut out, mut ev) = (Vec::new(), Vec::new());
            for p in pieces {
                w.feed(p, &mut out, &mut ev).unwrap();
            }
            assert_eq!(ev, want);
            assert_eq!(out, want_out);
        };
        for cut in 0..=stream.len() {
            run(vec![&stream[..cut], &stream[cut..]]);
        }
        run(stream.chunks(1).collect());
        run(stream.chunks(7).collect());
    }

    #[test]
    fn resp_handles_every_split() {
        let (s, want) = resp_stream();
        check_splits(RespWire::default, &s, &want, b"");
    }

    #[test]
    fn nats_handles_every_split_and_answers_ping() {
        let (s, want, out) = nats_stream();
        check_splits(NatsWire::default, &s, &want, &out);
    }

    #[test]
    fn bare_handles_every_split() {
        for len in [16, 33, 512] {
            let (s, want) = bare_stream(len);
            check_splits(|| BareWire::new(len), &s, &want, b"");
        }
    }

    #[test]
    fn subscribe_requests() {
        let mut out = Vec::new();
        RespWire::default().start(&mut out);
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$11\r\ntypha.bench\r\n");
        out.clear();
        NatsWire::default().start(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("CONNECT {\"verbose\":false,\"pedantic\":false"));
        assert!(s.ends_with("\r\nSUB typha.bench 1\r\nPING\r\n"));
    }

    #[test]
    fn bad_input_is_an_error() {
        let feed = |w: &mut dyn Wire, s: &[u8]| w.feed(s, &mut Vec::new(), &mut Vec::new());
        assert!(feed(&mut RespWire::default(), b"-ERR nope\r\n").is_err());
        assert!(feed(&mut RespWire::default(), b"?x\r\n").is_err());
        assert!(feed(&mut RespWire::default(), b"*3\r\n*1\r\n").is_err());
        assert!(feed(&mut RespWire::default(), b"$3\r\nabcXY").is_err());
        assert!(feed(&mut RespWire::default(), b"*1\n").is_err());
        // A message too short to carry the stamp.
        assert!(feed(
            &mut RespWire::default(),
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nabc\r\n"
        )
        .is_err());
        assert!(feed(&mut RespWire::default(), &vec![b'a'; MAX_LINE + 1]).is_err());
        assert!(feed(&mut NatsWire::default(), b"-ERR 'Slow Consumer'\r\n").is_err());
        assert!(feed(&mut NatsWire::default(), b"BOGUS\r\n").is_err());
        assert!(feed(&mut NatsWire::default(), b"MSG a 1 x\r\n").is_err());
        assert!(feed(&mut BareWire::new(16), b"x").is_err());
        // Nothing is lost when one connection's input is bad: a fresh parser is independent.
        let (s, want) = resp_stream();
        let mut ev = Vec::new();
        RespWire::default()
            .feed(&s, &mut Vec::new(), &mut ev)
            .unwrap();
        assert_eq!(ev, want);
    }

    /// Hello, an empty snapshot at seq 3, then Updates frames 3..=4 (overlapping the snapshot),
    /// a ping, and 5..=7 (three batches in one frame).
    fn typha_stream() -> (Vec<u8>, Vec<WireEvent>) {
        use typha::model::{StateMap, Update, UpdateType};
        use typha::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions};
        use typha::proto::{
            encode_frame, ping_frame, ServerHello, ServerMessage, PROTOCOL_VERSION,
        };
        let mut s = encode_frame(&ServerMessage::ServerHello(ServerHello {
            protocol_version: PROTOCOL_VERSION,
            server_id: "srv".into(),
            connection_id: 1,
            syncer_type: "felix".into(),
            compression: None,
        }))
        .to_vec();
        let snap = encode_snapshot(
            &StateMap::new(),
            3,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            1024,
        );
        for f in &snap.frames {
            s.extend_from_slice(f);
        }
        let u = Update {
            key: "/calico/v1/config/LoadtestPayload".into(),
            value: Some(bytes::Bytes::from(vec![b'a'; 600])),
            revision: "9".into(),
            update_type: UpdateType::Updated,
        };
        let opts = EncodeOptions {
            codec: None,
            ..Default::default()
        };
        let frame = |first, last, at| {
            encode_batch_part(first, last, at, &[&u], None, &opts)
                .unwrap()
                .plain()
                .clone()
        };
        s.extend_from_slice(&frame(3, 4, 1_000));
        s.extend_from_slice(&ping_frame(42, 0));
        s.extend_from_slice(&frame(5, 7, 2_000));
        let want = vec![
            WireEvent::Subscribed,
            WireEvent::Message {
                stamp: 1_000,
                seq: 4,
                count: 1,
            },
            WireEvent::Message {
                stamp: 2_000,
                seq: 7,
                count: 3,
            },
        ];
        (s, want)
    }

    #[test]
    fn typha_counts_new_batches_and_answers_pings_at_every_split() {
        let (s, want) = typha_stream();
        let pong = {
            // What the session answers to the ping, without the Hello it queued at start.
            let mut w = TyphaWire::new(0);
            let (mut out, mut ev) = (Vec::new(), Vec::new());
            w.start(&mut out);
            out.clear();
            w.feed(&s, &mut out, &mut ev).unwrap();
            assert_eq!(ev, want);
            assert!(!out.is_empty(), "a pong is queued");
            out
        };
        let run = |pieces: Vec<&[u8]>| {
            let mut w = TyphaWire::new(0);
            let (mut out, mut ev) = (Vec::new(), Vec::new());
            w.start(&mut out);
            assert!(!out.is_empty(), "the Hello is queued at start");
            out.clear();
            for p in pieces {
                w.feed(p, &mut out, &mut ev).unwrap();
            }
            assert_eq!(ev, want);
            assert_eq!(out, pong);
        };
        for cut in 0..=s.len() {
            run(vec![&s[..cut], &s[cut..]]);
        }
        run(s.chunks(1).collect());
    }

    /// A plain (streamed-path) Felix stream: the snapshot holds payload 2, then payload 3, a
    /// ping, and one message with payloads 5 and 6 (4 was coalesced away).
    fn felix_stream() -> (Vec<u8>, Vec<WireEvent>) {
        use typha::proto::typha::{
            encode_kvs, encode_ping, encode_server_hello, encode_sync_status, server_preamble,
            GoTime, SerializedUpdate, ServerHello, UPDATE_TYPE_NEW, UPDATE_TYPE_UPDATED,
        };
        let payload = |stamp: u64, n: u64, kind: u8| SerializedUpdate {
            key: PAYLOAD_KEY.into(),
            value: Some(bytes::Bytes::from(format!(
                "{stamp:016x}{n:016x}{}",
                "ab".repeat(40)
            ))),
            revision: format!("{}", 100 + n),
            update_type: kind,
            ..SerializedUpdate::default()
        };
        let other = SerializedUpdate {
            key: "/calico/v1/config/Other".into(),
            value: Some(bytes::Bytes::from_static(b"x")),
            revision: "1".into(),
            update_type: UPDATE_TYPE_NEW,
            ..SerializedUpdate::default()
        };
        let mut s = server_preamble().to_vec();
        s.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "v".into(),
            syncer_type: SYNCER_FELIX.into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        s.extend_from_slice(&encode_kvs(&[
            payload(20, 2, UPDATE_TYPE_NEW),
            other.clone(),
        ]));
        s.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        s.extend_from_slice(&encode_kvs(&[payload(30, 3, UPDATE_TYPE_UPDATED)]));
        s.extend_from_slice(&encode_ping(GoTime::from_unix_nanos(5)));
        s.extend_from_slice(&encode_kvs(&[
            payload(50, 5, UPDATE_TYPE_UPDATED),
            other,
            payload(60, 6, UPDATE_TYPE_UPDATED),
        ]));
        let want = vec![
            WireEvent::Subscribed,
            WireEvent::Message {
                stamp: 30,
                seq: 3,
                count: 1,
            },
            WireEvent::Message {
                stamp: 50,
                seq: 5,
                count: 2,
            },
            WireEvent::Message {
                stamp: 60,
                seq: 6,
                count: 1,
            },
        ];
        (s, want)
    }

    #[test]
    fn felix_reads_stamps_from_values_and_answers_pings_at_every_split() {
        let (s, want) = felix_stream();
        let run = |pieces: Vec<&[u8]>| {
            let mut w = FelixWire::new(0);
            let (mut out, mut ev) = (Vec::new(), Vec::new());
            w.start(&mut out);
            assert!(!out.is_empty(), "the ClientHello is queued at start");
            out.clear();
            for p in pieces {
                w.feed(p, &mut out, &mut ev).unwrap();
            }
            assert_eq!(ev, want);
            assert!(!out.is_empty(), "a pong is queued");
            out
        };
        let whole = run(vec![&s]);
        for cut in (0..=s.len()).step_by(7) {
            assert_eq!(run(vec![&s[..cut], &s[cut..]]), whole);
        }
        assert_eq!(run(s.chunks(1).collect()), whole);
    }

    #[test]
    fn felix_rejects_a_payload_without_its_head() {
        use typha::proto::typha::{
            encode_kvs, encode_server_hello, encode_sync_status, server_preamble, SerializedUpdate,
            ServerHello,
        };
        let mut s = server_preamble().to_vec();
        s.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "v".into(),
            syncer_type: SYNCER_FELIX.into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        s.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        s.extend_from_slice(&encode_kvs(&[SerializedUpdate {
            key: PAYLOAD_KEY.into(),
            value: Some(bytes::Bytes::from_static(b"not-hex")),
            ..SerializedUpdate::default()
        }]));
        let mut w = FelixWire::new(0);
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let e = w.feed(&s, &mut out, &mut ev).unwrap_err();
        assert!(e.contains("stamp"), "{e}");
    }
}
