//! Tether's wire contract and client SDK.
//!
//! [`proto`] holds the generated types and gRPC clients/servers of
//! `proto/tether/v1` (the contract between agents, the control plane,
//! operators and the connector runtime). The client SDK that a connector
//! runtime links arrives with the Dial API.

pub mod proto {
    //! Generated from `proto/tether/v1/*.proto`. Every message and field is
    //! documented in the .proto files.
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("tether.v1");

    /// The encoded file descriptor set of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tether_descriptor");
}

mod redact;
