//! Generates the gRPC code of `proto/murron.proto` (the `Murron` service
//! and its `Ack`) for the `murron_grpc` source and sink.
//!
//! Decision (issue 4): no `protoc`. The `.proto` is compiled by `protox`, a
//! pure-Rust protobuf compiler from crates.io, into a `FileDescriptorSet`
//! that `tonic-prost-build` turns into Rust. So a fresh machine needs only
//! `cargo`: nothing to apt-get, no `PROTOC` variable, and the same compiler
//! version everywhere (it is pinned in `Cargo.lock`).
//!
//! `Event` is mapped to the hand-written `codec::proto::pb::Event` and
//! `Batch` to `murron::wire::Batch` (the batch's bytes, decoded by the fast
//! zero-copy reader of `codec::proto`), so prost generates neither. The
//! service goes through `murron::wire::WireCodec` instead of prost's codec
//! so that a corrupt batch reaches our handler, which counts it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest.join("../../proto");
    let proto = proto_dir.join("murron.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let fds = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        .extern_path(".murron.v1.Event", "crate::codec::proto::pb::Event")
        .extern_path(".murron.v1.Batch", "crate::murron::wire::Batch")
        .codec_path("crate::murron::wire::WireCodec")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
