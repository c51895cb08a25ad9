//! Identity: the CA and certificates, and the secrets (join tokens, API
//! keys) that are stored only as hashes.

pub mod ca;
pub mod secrets;

pub use ca::{AgentCertificate, Authority, CaError, CsrError};
