//! Generated protobuf and gRPC bindings for `authz.v1`, and the encoded file descriptor
//! set that gRPC reflection serves.
#![allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

tonic::include_proto!("authz.v1");

/// The encoded `FileDescriptorSet` of `proto/`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("authz_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_service() {
        let fds = prost_types_decode(super::FILE_DESCRIPTOR_SET);
        assert!(fds.contains("authz.v1"), "package missing");
        assert!(fds.contains("AuthorizationService"), "service missing");
    }

    // prost-types is not a dependency; decoding as raw bytes is enough to prove the set
    // is well-formed protobuf and carries our names.
    fn prost_types_decode(bytes: &[u8]) -> String {
        let raw = RawSet::decode(bytes).unwrap();
        raw.file
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct RawSet {
        #[prost(bytes = "vec", repeated, tag = "1")]
        file: Vec<Vec<u8>>,
    }
}
