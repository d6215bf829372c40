//! Compiles `proto/` with protox (no system `protoc`) and tonic-prost-build, and writes
//! the encoded file descriptor set to `OUT_DIR` for gRPC reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // refinery embeds `migrations/` at compile time; a new migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(["authz/v1/authz.proto", "authz/v1/admin.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("authz_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
