//! Tokens, webhook signatures and TLS: what proves who is calling and keeps
//! the wire private.

pub mod signature;
pub mod tls;
pub mod tokens;
