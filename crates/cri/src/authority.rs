//! Accepts gRPC clients that send a unix socket path as the HTTP/2 :authority.
