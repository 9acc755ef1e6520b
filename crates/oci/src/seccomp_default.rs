//! berth's built-in seccomp profile, what the CRI daemon applies for
//! `RuntimeDefault`. It has the effect of the default profiles of moby,
//! containerd and CRI-O: everything not listed fails with EPERM; the list is
//! the syscalls ordinary programs use; syscalls that need a capability are
//! allowed only when the process has it; namespace creation (clone/unshare
//! with CLONE_NEW* flags), kernel keyrings, BPF, perf, mounting, module
//! loading, reboot, clock setting, io_uring and userfaultfd are refused.
//! docs/seccomp.md explains each group.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Allowed for every container.
#[rustfmt::skip]
const ALWAYS: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
    "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv", "preadv2",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64",
    "setxattr", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
    "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice",
    "write", "writev", "name_to_handle_at", "ioctl", "cachestat",
    // notification and polling
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "pipe", "pipe2",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect", "signalfd",
    "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
    // asynchronous I/O (io_uring is left out, as moby and containerd do)
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "ioprio_get", "ioprio_set",
    // memory
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall",
    "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    "map_shadow_stack", "mseal",
    // processes, threads, signals
    "alarm", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex",
    "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "get_robust_list",
    "get_thread_area", "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "getrusage", "getsid", "gettid", "getuid", "getuid32", "kill", "pause",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
    "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid",
    "setuid32", "sigaltstack", "signal", "sigaction", "sigpending", "sigprocmask", "sigreturn",
    "sigsuspend", "tgkill", "tkill", "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    // time
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday", "nanosleep", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "times",
    // System V and POSIX IPC (namespaced)
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // sockets (socket itself is below, with an argument condition)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    // system information
    "getrandom", "sysinfo", "uname",
    // reading the clock state; setting it needs CAP_SYS_TIME in the kernel
    "adjtimex", "clock_adjtime", "clock_adjtime64",
    // ptrace and process_vm_* are safe since Linux 4.8 (seccomp is
    // re-checked after a tracer changes a syscall), as moby allows them.
    "ptrace", "process_vm_readv", "process_vm_writev",
];

/// Architecture-specific syscalls of x86.
const X86: &[&str] = &["arch_prctl", "modify_ldt"];
/// Architecture-specific syscalls of arm and arm64.
#[rustfmt::skip]
const ARM: &[&str] = &[
    "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
    "set_tls",
];

/// Syscalls allowed only with a capability: (capability, syscalls).
#[rustfmt::skip]
const BY_CAP: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
            "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
            "umount2", "unshare",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    // Reaching into another process's fds and memory, as moby gates them.
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Namespace flags clone(2) and unshare(2) may not carry without
/// CAP_SYS_ADMIN: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// CLONE_NEWTIME: an unshare flag only (in clone it is part of the exit
/// signal byte).
const CLONE_NEWTIME: u64 = 0x80;
const AF_VSOCK: u64 = 40;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn rule_if(names: &[&str], op: LinuxSeccompOperator, value: u64, two: Option<u64>) -> LinuxSyscall {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .op(op)
        .value(value);
    if let Some(t) = two {
        b = b.value_two(t);
    }
    let a = b.build().expect("all fields set");
    let mut s = rule(names, LinuxSeccompAction::ScmpActAllow);
    s.set_args(Some(vec![a]));
    s
}

/// The architectures a filter for this machine covers: the native one and
/// the compat ABIs its kernel can run.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// The default profile for a process whose bounding set is `caps`
/// (capability names such as "CAP_SYS_ADMIN").
pub fn profile<S: AsRef<str>>(caps: &[S]) -> LinuxSeccomp {
    let has = |c: &str| caps.iter().any(|x| x.as_ref() == c);
    let mut allow: Vec<&str> = ALWAYS.to_vec();
    match std::env::consts::ARCH {
        "x86_64" | "x86" => allow.extend_from_slice(X86),
        "aarch64" | "arm" => allow.extend_from_slice(ARM),
        _ => {}
    }
    for (cap, names) in BY_CAP {
        if has(cap) {
            allow.extend_from_slice(names);
        }
    }
    allow.sort_unstable();
    allow.dedup();
    let mut syscalls = vec![rule(&allow, LinuxSeccompAction::ScmpActAllow)];
    // socket: every family but vsock, which reaches the host's hypervisor
    // services.
    syscalls.push(rule_if(
        &["socket"],
        LinuxSeccompOperator::ScmpCmpNe,
        AF_VSOCK,
        None,
    ));
    // personality: only the Linux personalities and the query, not e.g.
    // READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE, which weaken the process.
    for p in [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(rule_if(
            &["personality"],
            LinuxSeccompOperator::ScmpCmpEq,
            p,
            None,
        ));
    }
    if !has("CAP_SYS_ADMIN") {
        // Threads and processes yes, namespaces no.
        syscalls.push(rule_if(
            &["clone"],
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        ));
        syscalls.push(rule_if(
            &["unshare"],
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME,
            Some(0),
        ));
        // clone3's flags sit in memory a filter cannot read: ENOSYS makes
        // libcs fall back to clone, which the rule above checks.
        let mut c3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        c3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(c3);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_default_errno_ret(Some(libc::EPERM as u32));
    s.set_architectures(Some(architectures()));
    s.set_syscalls(Some(syscalls));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_with_and_without_sys_admin() {
        for caps in [vec![], vec!["CAP_SYS_ADMIN".to_string()]] {
            let p = profile(&caps);
            crate::seccomp::compile(&p).expect("default profile compiles");
        }
    }

    #[test]
    fn capability_gates() {
        let names =
            |p: &LinuxSeccomp| -> Vec<String> { p.syscalls().as_ref().unwrap()[0].names().clone() };
        let none = profile::<&str>(&[]);
        assert!(!names(&none).contains(&"mount".to_string()));
        assert!(names(&none).contains(&"read".to_string()));
        let admin = profile(&["CAP_SYS_ADMIN"]);
        assert!(names(&admin).contains(&"mount".to_string()));
        let ptrace = profile(&["CAP_SYS_PTRACE"]);
        for n in ["kcmp", "pidfd_getfd", "process_madvise"] {
            assert!(!names(&none).contains(&n.to_string()), "{n}");
            assert!(!names(&admin).contains(&n.to_string()), "{n}");
            assert!(names(&ptrace).contains(&n.to_string()), "{n}");
        }
        for n in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            assert!(names(&none).contains(&n.to_string()), "{n}");
        }
    }
}
