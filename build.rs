//! Compiles proto/taskqueue.proto with the vendored protoc (no system protoc needed for our own
//! code) and writes the descriptor set that reflection serves and the conformance test reads.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("taskqueue_descriptor.bin"))
        .build_client(true)
        // `taskqueue … --output json` prints the wire messages as they are.
        .type_attribute(".taskqueue", "#[derive(serde::Serialize)]")
        .build_server(true)
        .compile_protos(
            &[std::path::PathBuf::from("proto/taskqueue.proto")],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto/taskqueue.proto");
    Ok(())
}
