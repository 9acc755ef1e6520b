//! berthd: the CRI services.

pub mod cni;
pub mod spec;
