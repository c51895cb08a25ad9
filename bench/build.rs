//! Compiles the floor relay's one-call protocol (proto/floor.proto); the
//! protoc binary comes from `protoc-bin-vendored`, as in the root crate.

use std::io;

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| io::Error::other(format!("vendored protoc unavailable: {e}")))?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // A chunk is a slice of the receive buffer, as Tether's frames are.
        .bytes(".floor.v1.Chunk.data")
        .compile_with_config(config, &["proto/floor.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/floor.proto");
    Ok(())
}
