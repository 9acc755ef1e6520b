//! Kubernetes Pod manifests.
