//! Client side of the protocol (filled in by the client-library work).
