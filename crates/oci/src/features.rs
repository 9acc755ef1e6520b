//! `berth features`: what this build implements, in the runtime-spec
//! features format. Keep it true: callers decide what to ask for from it.

use serde_json::{json, Value};

pub fn features() -> Value {
    let mount_options: Vec<&str> = [
        "defaults",
        "ro",
        "rw",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "sync",
        "async",
        "dirsync",
        "remount",
        "mand",
        "nomand",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "bind",
        "rbind",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "nosymfollow",
        "symfollow",
        "silent",
        "loud",
        "private",
        "rprivate",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
        "rro",
        "rrw",
        "rnosuid",
        "rsuid",
        "rnodev",
        "rdev",
        "rnoexec",
        "rexec",
        "rnoatime",
        "ratime",
        "rnodiratime",
        "rdiratime",
        "rstrictatime",
        "rnostrictatime",
        "rrelatime",
        "rnorelatime",
        "rnosymfollow",
        "rsymfollow",
        // tmpfs mounts filled with the image's content (rootfs.rs).
        "tmpcopyup",
        // Idmapped bind mounts (idmap.rs).
        "idmap",
        "ridmap",
    ]
    .to_vec();
    let last = crate::caps::last_cap() as usize;
    let caps: Vec<&str> = crate::caps::NAMES.iter().take(last + 1).copied().collect();
    // linux.resources.rdma is written on cgroup v2 only; v1 has no rdma
    // hierarchy berth places containers in, so there it would be ignored.
    let rdma = berth_cgroups::detect_mode(std::path::Path::new(crate::CGROUP_ROOT))
        == berth_cgroups::Mode::Unified;
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mount_options,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": rdma},
            "seccomp": crate::seccomp_features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}},
            "netDevices": {"enabled": true},
            "memoryPolicy": {
                "modes": ["MPOL_DEFAULT", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_WEIGHTED_INTERLEAVE",
                          "MPOL_PREFERRED", "MPOL_PREFERRED_MANY", "MPOL_LOCAL"],
                "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"]
            }
        },
        "annotations": {
            "io.github.berth.version": env!("CARGO_PKG_VERSION")
        }
    })
}
