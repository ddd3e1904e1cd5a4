//! The publisher: one thread that sends a stamped message every `1/rate` seconds over an
//! ordinary blocking socket — `PUBLISH` for Redis, `PUB` for NATS, a 16-byte tick (the stamp and
//! sequence number the bare writer copies into its pre-built message) for the bare writer.
//! Each message carries its send time and sequence number in its first [`HEAD`] bytes.

use super::sub::{unix_nanos, Shared};
use super::wire::{write_head, CHANNEL, HEAD};
use super::Target;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub total: u64,
    /// Sequence numbers of the first and last message stamped inside the window (`first >
    /// last` when none).
    pub window_first_seq: u64,
    pub window_last_seq: u64,
    /// Messages sent later than their slot by more than one period (the publisher fell behind).
    pub late: u64,
    pub error: Option<String>,
}

/// A whole message (command or tick) with the offset of its [`HEAD`] bytes.
struct Frame {
    bytes: Vec<u8>,
    head_at: usize,
}

fn filler(len: usize) -> Vec<u8> {
    // Pseudo-random so that nothing on the way could compress it.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn frame(target: Target, msg_bytes: usize) -> Frame {
    let mut bytes = Vec::with_capacity(msg_bytes + 64);
    match target {
        Target::Redis => bytes.extend_from_slice(
            format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{CHANNEL}\r\n${msg_bytes}\r\n",
                CHANNEL.len()
            )
            .as_bytes(),
        ),
        Target::Nats => {
            bytes.extend_from_slice(format!("PUB {CHANNEL} {msg_bytes}\r\n").as_bytes())
        }
        Target::Bare | Target::Typha | Target::TyphaFelix => {}
    }
    let head_at = bytes.len();
    match target {
        Target::Redis | Target::Nats => {
            bytes.extend_from_slice(&filler(msg_bytes));
            bytes.extend_from_slice(b"\r\n");
        }
        Target::Bare | Target::Typha | Target::TyphaFelix => bytes.extend_from_slice(&[0; HEAD]),
    }
    Frame { bytes, head_at }
}

/// Connects the publisher and performs its handshake.
fn connect(target: Target, addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    if target == Target::Nats {
        (&s).write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"publisher\"}\r\n",
        )?;
    }
    Ok(s)
}

/// Reads what the server sends the publisher: Redis' `:N` replies (discarded), NATS `PING`s
/// (answered) and errors (kept), until the connection closes.
fn reader(
    target: Target,
    stream: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    error: Arc<Mutex<Option<String>>>,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.by_ref().take(64 * 1024).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.starts_with('-') {
            let mut e = error.lock().unwrap_or_else(|p| p.into_inner());
            e.get_or_insert_with(|| format!("server error to the publisher: {text}"));
        } else if target == Target::Nats && text.eq_ignore_ascii_case("PING") {
            let w = writer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = (&*w).write_all(b"PONG\r\n");
        }
    }
}

/// Publishes at `rate` from now until a message would be stamped at or after the window's end
/// (or `shared.stop`).
pub fn run(
    target: Target,
    addr: SocketAddr,
    msg_bytes: usize,
    rate: f64,
    shared: &Shared,
) -> Published {
    let mut out = Published {
        window_first_seq: 1,
        ..Published::default()
    };
    let stream = match connect(target, addr) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("publisher cannot connect to {addr}: {e}"));
            return out;
        }
    };
    let read_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("publisher socket: {e}"));
            return out;
        }
    };
    let writer = Arc::new(Mutex::new(stream));
    let error = Arc::new(Mutex::new(None));
    let reader_thread = {
        let (w, e) = (writer.clone(), error.clone());
        std::thread::Builder::new()
            .name("publisher-reader".into())
            .spawn(move || reader(target, read_half, w, e))
    };
    let mut frame = frame(target, msg_bytes);
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let win_start = shared.window_start_ns.load(Relaxed);
    let win_end = shared.window_end_ns.load(Relaxed);
    let mut seq = 0u64;
    loop {
        let due = start + period.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > period {
            out.late += 1;
        }
        let stamp = unix_nanos();
        if stamp >= win_end || shared.stop.load(Relaxed) {
            break;
        }
        seq += 1;
        write_head(&mut frame.bytes[frame.head_at..], stamp, seq);
        let sent = {
            let w = writer.lock().unwrap_or_else(|p| p.into_inner());
            (&*w).write_all(&frame.bytes)
        };
        if let Err(e) = sent {
            out.error = Some(format!("publisher write failed: {e}"));
            break;
        }
        out.total = seq;
        if stamp >= win_start {
            if out.window_last_seq == 0 {
                out.window_first_seq = seq;
            }
            out.window_last_seq = seq;
        }
    }
    {
        let w = writer.lock().unwrap_or_else(|p| p.into_inner());
        // Redis and NATS answer a PUBLISH/PUB sent before the shutdown; the reader reads to EOF.
        let _ = w.shutdown(Shutdown::Write);
    }
    if let Ok(t) = reader_thread {
        let _ = t.join();
    }
    if out.error.is_none() {
        out.error = error.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_payload_where_the_head_is_patched() {
        let f = frame(Target::Redis, 100);
        assert!(f
            .bytes
            .starts_with(b"*3\r\n$7\r\nPUBLISH\r\n$11\r\ntypha.bench\r\n$100\r\n"));
        assert_eq!(f.bytes.len(), f.head_at + 100 + 2);
        assert!(f.bytes.ends_with(b"\r\n"));
        let f = frame(Target::Nats, 512);
        assert!(f.bytes.starts_with(b"PUB typha.bench 512\r\n"));
        assert_eq!(f.bytes.len(), f.head_at + 512 + 2);
        let f = frame(Target::Bare, 8192);
        assert_eq!((f.head_at, f.bytes.len()), (0, HEAD));
    }
}
