//! Tether's wire contract and client SDK.
//!
//! - [`proto`]: the generated types and gRPC clients/servers of
//!   `proto/tether/v1` (the contract between agents, the control plane,
//!   operators and the connector runtime).
//! - [`dial()`]: the connector runtime's entry point: a byte stream to a
//!   target inside a private network, as `AsyncRead + AsyncWrite`.
//! - [`client`], [`tls`], [`join`]: how every client reaches the control
//!   plane (TLS 1.3, CA pinning, API keys, join tokens).
//!
//! `tetherctl`, the operator CLI, is this package's binary.

pub mod proto {
    //! Generated from `proto/tether/v1/*.proto`. Every message and field is
    //! documented in the .proto files.
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("tether.v1");

    /// The encoded file descriptor set of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tether_descriptor");
}

pub mod client;
pub mod config;
pub mod dial;
pub mod executor;
pub mod join;
pub mod logging;
pub mod malloc;
pub mod proxy;
pub mod read_buffer;
mod redact;
pub mod tls;

pub use dial::dial;

/// This build's version, as agents and control planes report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
