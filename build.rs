//! Compiles the image schema (proto/*.proto) into Rust types. Uses protox, a pure-Rust protobuf
//! compiler, so building crust needs no system `protoc`.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/crust_image.proto"], ["proto"]).expect("proto/crust_image.proto must compile");
    let mut config = prost_build::Config::new();
    config.type_attribute(".", "#[derive(serde::Serialize)]");
    config.compile_fds(descriptors).expect("generating Rust types for the image schema");
}
