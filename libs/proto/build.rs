//! Compiles `proto/mediamesh/v1/*.proto` with protox (pure Rust, no protoc on the machine).

use std::path::PathBuf;

use protox::prost::Message as _;

const FILES: &[&str] = &[
    "mediamesh/v1/common.proto",
    "mediamesh/v1/ingest.proto",
    "mediamesh/v1/jobs.proto",
    "mediamesh/v1/internal.proto",
    "mediamesh/v1/media.proto",
    "mediamesh/v1/inference.proto",
    "mediamesh/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("mediamesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
