//! berthd: the CRI services.

pub mod cni;
pub mod spec;
pub mod authority;
