//! Generates the CRI bindings from the vendored Kubernetes 1.36 proto.

use std::path::PathBuf;

fn main() {
    let vendored = "../../third_party/cri-api/v1.36/api.proto";
    println!("cargo:rerun-if-changed={vendored}");
    let text = std::fs::read_to_string(vendored).expect("reading the vendored CRI proto");
    // `debug_redact` (protobuf 22+) only marks secrets for debug printers;
    // Debian's protoc 3.21 does not know it, and prost ignores it anyway.
    let text = text.replace(" [debug_redact = true]", "");
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("proto");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/proto");
    let proto = dir.join("api.proto");
    std::fs::write(&proto, text).expect("writing OUT_DIR/proto/api.proto");
    tonic_prost_build::configure()
        // berthd keeps the CRI configs of pods and containers in its store.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Records written before a field existed still read back.
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(&[&proto], &[&dir])
        .expect("compiling the CRI proto (protoc comes with Debian's protobuf-compiler)");
}
