//! Pod-level resources (KEP-2837/5419): `LinuxPodSandboxConfig.resources`
//! at RunPodSandbox and UpdatePodSandboxResources later. The kubelet sizes
//! the pod cgroups it owns itself and tells the runtime afterwards; a pod
//! cgroup berthd made (no cgroup parent given) gets the limits from berthd,
//! so its containers cannot exceed their pod either way.

use crate::daemon::Daemon;
use crate::error::{internal, CriError, Result};
use crate::model::PodRecord;
use crate::store::Kind;
use berth_cri_api::v1::LinuxContainerResources;
use std::path::Path;

/// Checks pod-level resources, errors naming `field` (`resources.cpu_quota`).
fn validate(field: &str, r: &LinuxContainerResources) -> Result<()> {
    crate::resources::validate(
        r,
        None,
        berth_cgroups::detect_mode(Path::new(berth_oci::CGROUP_ROOT)),
        Path::new("/sys/kernel/mm/hugepages"),
    )
    .map_err(|e| match e {
        CriError::Invalid { field: f, msg } => CriError::Invalid {
            field: format!("{field}.{}", f.trim_start_matches("linux.")),
            msg,
        },
        e => e,
    })
}

/// Writes the pod's resources to the pod cgroup when berthd owns it
/// (creating it: its containers are made under it later).
pub fn apply(pod: &PodRecord) -> Result<()> {
    let Some(r) = pod.config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return Ok(());
    };
    if !pod.own_cgroup {
        return Ok(());
    }
    let res = crate::resources::to_oci(r).map_err(|m| internal(format!("pod resources: {m}")))?;
    let m = berth_cgroups::Manager::new(
        Path::new(berth_oci::CGROUP_ROOT),
        Path::new(&pod.cgroup_parent),
    );
    m.create()
        .and_then(|_| m.apply(&res))
        .map_err(|e| internal(format!("pod cgroup {}: {e}", pod.cgroup_parent)))
}

/// Checks RunPodSandbox's pod-level resources.
pub fn validate_config(
    r: Option<&LinuxContainerResources>,
    o: Option<&LinuxContainerResources>,
) -> Result<()> {
    if let Some(r) = r {
        validate("config.linux.resources", r)?;
    }
    if let Some(o) = o {
        validate("config.linux.overhead", o)?;
    }
    Ok(())
}

impl Daemon {
    /// UpdatePodSandboxResources: validated, recorded (so the pod reports
    /// and recovers with them) and applied to a pod cgroup berthd owns.
    pub fn update_pod_resources(
        &self,
        id: &str,
        overhead: Option<LinuxContainerResources>,
        resources: Option<LinuxContainerResources>,
    ) -> Result<()> {
        let pod = self.find_pod(id)?;
        if let Some(r) = &resources {
            validate("resources", r)?;
        }
        if let Some(o) = &overhead {
            validate("overhead", o)?;
        }
        let updated = self.store.update(Kind::Pod, &pod.id, |mut p: PodRecord| {
            let l = p.config.linux.get_or_insert_with(Default::default);
            if overhead.is_some() {
                l.overhead = overhead.clone();
            }
            if resources.is_some() {
                l.resources = resources.clone();
            }
            Some(p)
        })?;
        match updated {
            Some(p) => apply(&p),
            None => Err(CriError::NotFound(format!("pod sandbox {id}"))),
        }
    }
}
