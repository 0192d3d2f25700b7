//! Generated gRPC and protobuf code for `mediamesh.v1`, the public contract.

#![allow(clippy::all, clippy::pedantic)]

/// `mediamesh.v1`: messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("mediamesh.v1");
}

/// The encoded `FileDescriptorSet` of every mediamesh proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mediamesh_descriptor");

pub use prost_types::Timestamp;
