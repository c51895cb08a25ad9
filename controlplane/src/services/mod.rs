//! The gRPC services of the control plane, one module each.

pub mod admin;
pub mod agent_auth;
pub mod dial;
pub mod enrollment;
pub mod tunnel;
