//! Compiles `tandem/v1/*.proto` in pure Rust (protox): no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tandem/v1/common.proto",
        "tandem/v1/agent.proto",
        "tandem/v1/controller.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
