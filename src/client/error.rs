//! The one error type of the client library.

use crate::proto::{GoodbyeReason, ProtoError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// A socket operation failed (other than a timeout, which is [`ClientError::Timeout`]).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be decoded: too large, malformed, bad compression.
    #[error("undecodable frame: {0}")]
    Proto(#[from] ProtoError),
    /// The frames decoded but broke the protocol: a sequence gap or duplicate, a message out of
    /// order, a snapshot whose key count or digest does not match what was received.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server said goodbye; returned by the call after the one that returned the
    /// `Goodbye` event.
    #[error("server said goodbye ({}): {message}", reason.as_str())]
    Goodbye {
        reason: GoodbyeReason,
        message: String,
    },
    /// The peer closed the connection. `buffered` is the number of bytes of an incomplete
    /// frame that were held when it did (non-zero means it closed mid-frame).
    #[error("connection closed by the peer ({buffered} bytes of an incomplete frame buffered)")]
    Closed { buffered: usize },
    /// The replicas could not be found (a Kubernetes Service's endpoints, say).
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// Discovery found no replica to connect to.
    #[error("no replicas found")]
    NoReplicas,
    /// The TLS files would not load.
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] crate::tls::TlsError),
    /// TLS failed: the server's certificate was refused (untrusted, or not the expected CN /
    /// URI SAN), the server refused ours, or a record was bad.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// A read timeout, connect timeout or overall deadline expired.
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        ClientError::Protocol(msg.into())
    }

    /// Whether this is a timeout (the connection may still be usable).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout)
    }
}
