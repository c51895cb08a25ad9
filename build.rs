//! Compiles the wire contract in proto/ into Rust (prost messages, tonic
//! clients and servers) and writes the file descriptor set that server
//! reflection serves. The protoc binary comes from `protoc-bin-vendored`, so
//! a fresh machine needs no system protoc.

use std::{env, io, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/tether/v1/tunnel.proto",
    "proto/tether/v1/enrollment.proto",
    "proto/tether/v1/admin.proto",
    "proto/tether/v1/dial.proto",
];

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| io::Error::other(format!("vendored protoc unavailable: {e}")))?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    let out = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    tonic_prost_build::configure()
        // Payloads become `bytes::Bytes`: a decoded frame is a slice of the
        // receive buffer, not a copy.
        .bytes(".tether.v1.ChannelData.payload")
        .bytes(".tether.v1.DialData.payload")
        .bytes(".tether.v1.JobAssign.payload")
        // Messages that carry secrets get a hand-written, redacting Debug
        // (src/redact.rs), so a `{:?}` can never print a token or a key.
        .skip_debug([
            ".tether.v1.EnrollRequest",
            ".tether.v1.CreateEnrollmentTokenResponse",
            ".tether.v1.CreateApiKeyResponse",
        ])
        .file_descriptor_set_path(out.join("tether_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
