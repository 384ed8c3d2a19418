//! Generates the gRPC code from `proto/tessera.proto` without a `protoc`
//! binary: protox parses the schema in pure Rust into a descriptor set and
//! tonic-prost-build generates from that.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tessera.proto");
    let descriptors = protox::compile(["proto/tessera.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
