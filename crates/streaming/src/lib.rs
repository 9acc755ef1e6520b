//! Kubernetes stream protocols for exec, attach and port-forward.
