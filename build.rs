//! Compiles the image schema (proto/*.proto) into Rust types. Uses protox, a pure-Rust protobuf
//! compiler, so building crust needs no system `protoc`.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/crust_image.proto"], ["proto"]).expect("proto/crust_image.proto must compile");
    let mut config = prost_build::Config::new();
    config.type_attribute(".", "#[derive(serde::Serialize)]");
    // A process may have tens of thousands of areas, whose records are decoded into one
    // vector: their rare parts are boxed, so that each Vma stays small.
    config.boxed(".crust.image.v1.Vma.file");
    config.boxed(".crust.image.v1.Vma.sysv_shm");
    config.boxed(".crust.image.v1.Vma.aio_ring");
    config.compile_fds(descriptors).expect("generating Rust types for the image schema");
}
