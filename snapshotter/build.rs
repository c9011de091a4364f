//! Generates the server side of containerd's snapshots API from the vendored
//! protos (containerd v1 API, Apache-2.0; see proto/README.md). The client side
//! of the other services comes from the `containerd-client` crate, built on the
//! same tonic.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(
            &["proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
            &["proto"],
        )
        .expect("generating the snapshots service (is protoc installed? apt-get install protobuf-compiler)");
}
