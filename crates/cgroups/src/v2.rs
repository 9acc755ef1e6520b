//! cgroup v2: the unified hierarchy, one directory per container.

use crate::stats::Stats;
use crate::{Manager, Result};
use oci_spec::runtime::LinuxResources;

/// Writes `linux.resources` into the container's v2 directory, converting
/// OCI (v1-shaped) values to v2 files where needed.
pub fn apply(_m: &Manager, _r: &LinuxResources) -> Result<()> {
    Ok(())
}

/// Reads accounting from the container's v2 directory.
pub fn stats(_m: &Manager) -> Result<Stats> {
    Ok(Stats::default())
}
