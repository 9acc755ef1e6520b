//! The per-pod monitor: a small process that is the parent (subreaper) of a
//! pod's containers, holds their stdio, writes their CRI logs and records
//! their exit codes durably, so containers keep running and logging while
//! berthd is down or restarting.

mod cli;
pub mod logs;
pub mod pidinit;
pub mod proto;
pub mod server;

pub use cli::run_main;
