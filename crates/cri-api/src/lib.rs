//! The Container Runtime Interface of Kubernetes 1.36 (`runtime.v1`):
//! messages, the RuntimeService and ImageService clients and servers,
//! generated at build time from `third_party/cri-api/v1.36/api.proto`.

/// `runtime.v1`.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}
