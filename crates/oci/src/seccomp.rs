//! seccomp: the OCI `linux.seccomp` object compiled to BPF with libseccomp in
//! the runtime process (so errors surface before anything is created), then
//! loaded by the container's init with seccomp(2).
//!
//! Compiling the default profile costs libseccomp 10-14 ms, reading it back
//! ~30 µs, so [`compile_cached`] keeps the BPF of each distinct profile in
//! the state root, keyed by a SHA-256 of the profile, berth's and
//! libseccomp's versions and the machine.
//!
//! `SCMP_ACT_NOTIFY`: the init loads the filter with
//! `SECCOMP_FILTER_FLAG_NEW_LISTENER` and passes the listener fd to the
//! runtime over the sync channel; the runtime connects to `listenerPath` and
//! sends the OCI "containerProcessState" JSON with the fd (SCM_RIGHTS).

use crate::error::{last_os, Error, Result};
use crate::sync::{Channel, Msg};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_uint = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_uint = 1 << 2;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_uint = 1 << 5;
/// The kernel's limit on one filter's length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// Every x86_64 syscall name up to Linux 6.15. A profile may list one that
/// this libseccomp does not know yet (it is skipped, as runc and crun do);
/// a name in neither is a typo and an error.
const LINUX_SYSCALLS: &str = "
    read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
    rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select
    sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep
    getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg
    recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt clone
    fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd msgrcv
    msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir fchdir rename
    mkdir rmdir creat link unlink symlink readlink chmod fchmod chown fchown lchown umask
    gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog getgid setuid setgid
    geteuid getegid setpgid getppid getpgrp setsid setreuid setregid getgroups setgroups
    setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid getsid capget capset
    rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack utime mknod uselib
    personality ustat statfs fstatfs sysfs getpriority setpriority sched_setparam sched_getparam
    sched_setscheduler sched_getscheduler sched_get_priority_max sched_get_priority_min
    sched_rr_get_interval mlock munlock mlockall munlockall vhangup modify_ldt pivot_root
    _sysctl prctl arch_prctl adjtimex setrlimit chroot sync acct settimeofday mount umount2
    swapon swapoff reboot sethostname setdomainname iopl ioperm create_module init_module
    delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg afs_syscall
    tuxcall security gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr
    listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex
    sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents
    io_submit io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
    remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64
    timer_create timer_settime timer_gettime timer_getoverrun timer_delete clock_settime
    clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes
    vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive
    mq_notify mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set ioprio_get
    inotify_init inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat
    fchownat futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat
    faccessat pselect6 ppoll unshare set_robust_list get_robust_list splice tee sync_file_range
    vmsplice move_pages utimensat epoll_pwait signalfd timerfd_create eventfd fallocate
    timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2
    inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init
    fanotify_mark prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg
    setns getcpu process_vm_readv process_vm_writev kcmp finit_module sched_setattr
    sched_getattr renameat2 seccomp getrandom memfd_create kexec_file_load bpf execveat
    userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc
    pkey_free statx io_pgetevents rseq pidfd_send_signal io_uring_setup io_uring_enter
    io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3
    close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr
    quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
    process_mrelease futex_waitv set_mempolicy_home_node cachestat fchmodat2 map_shadow_stack
    futex_wake futex_wait futex_requeue statmount listmount lsm_get_self_attr lsm_set_self_attr
    lsm_list_modules mseal setxattrat getxattrat listxattrat removexattrat open_tree_attr
";

/// Where `SCMP_ACT_NOTIFY` notifications go.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub path: PathBuf,
    pub metadata: String,
}

/// A filter ready to load: BPF instructions, seccomp(2) flags and, with
/// `SCMP_ACT_NOTIFY` rules, the agent that receives the listener.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub bpf: Vec<libc::sock_filter>,
    pub flags: libc::c_uint,
    pub listener: Option<Listener>,
}

fn field(name: &str, msg: impl Into<String>) -> Error {
    Error::config("config.json", format!("linux.seccomp.{name}"), msg)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, fieldname: &str) -> Result<ScmpAction> {
    let errno = match errno {
        Some(e) if e > 4095 => {
            let f = if fieldname == "defaultAction" {
                "defaultErrnoRet".to_string()
            } else {
                fieldname.replace(".action", ".errnoRet")
            };
            return Err(field(&f, format!("{e} is not an errno (1..4095)")));
        }
        Some(e) => e,
        None => libc::EPERM as u32,
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn op(o: LinuxSeccompOperator, value_two: u64) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two),
    }
}

fn lib_err(ctx: &str, e: libseccomp::error::SeccompError) -> Error {
    Error::Other(format!("seccomp: {ctx}: {e}"))
}

fn is_linux_syscall(name: &str) -> bool {
    LINUX_SYSCALLS.split_ascii_whitespace().any(|n| n == name)
}

/// Checks that need no libseccomp, and the parts of [`Compiled`] that do not
/// come from the BPF (flags and listener).
fn check(s: &LinuxSeccomp) -> Result<(libc::c_uint, Option<Listener>)> {
    if s.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(field(
            "defaultAction",
            "SCMP_ACT_NOTIFY cannot be the default action (the init itself could not run)",
        ));
    }
    let mut notify = false;
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        if sc.names().is_empty() {
            return Err(field(&format!("syscalls[{i}].names"), "is empty"));
        }
        for (j, a) in sc.args().iter().flatten().enumerate() {
            if a.index() > 5 {
                return Err(field(
                    &format!("syscalls[{i}].args[{j}].index"),
                    format!("{} is not an argument index (0..5)", a.index()),
                ));
            }
        }
        if sc.action() == LinuxSeccompAction::ScmpActNotify {
            notify = true;
            // The init hands the listener over with sendmsg after loading
            // the filter: notifying sendmsg would deadlock it.
            if let Some(k) = sc.names().iter().position(|n| n == "sendmsg") {
                return Err(field(
                    &format!("syscalls[{i}].names[{k}]"),
                    "SCMP_ACT_NOTIFY cannot apply to sendmsg (the runtime needs it to pass the listener)",
                ));
            }
        }
    }
    let listener = match (notify, s.listener_path()) {
        (true, Some(p)) if p.is_absolute() => Some(Listener {
            path: p.clone(),
            metadata: s.listener_metadata().clone().unwrap_or_default(),
        }),
        (true, Some(p)) => {
            return Err(field(
                "listenerPath",
                format!("{} is not an absolute path", p.display()),
            ))
        }
        (true, None) => {
            return Err(field(
                "listenerPath",
                "is required when a rule uses SCMP_ACT_NOTIFY",
            ))
        }
        (false, _) => None,
    };
    let mut flags = if listener.is_some() {
        SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // Only meaningful with a listener; the kernel refuses it without.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv if listener.is_some() => {
                SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
            // Meaningless for a single-threaded init.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
        };
    }
    Ok((flags, listener))
}

/// Compiles the profile. Names of Linux syscalls this libseccomp does not
/// know are skipped (profiles list syscalls of newer kernels); names that
/// are no syscall at all are an error.
pub fn compile(s: &LinuxSeccomp) -> Result<Compiled> {
    let (flags, listener) = check(s)?;
    let default = action(s.default_action(), s.default_errno_ret(), "defaultAction")?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| lib_err("init", e))?;
    // berth sets no_new_privs itself, from process.noNewPrivileges.
    ctx.set_ctl_nnp(false).map_err(|e| lib_err("nnp", e))?;
    // A binary tree over syscall numbers: a few hundred more instructions,
    // but O(log n) per syscall where the kernel's action cache (5.11+) does
    // not apply (argument checks, older kernels).
    ctx.set_ctl_optimize(2)
        .map_err(|e| lib_err("optimize", e))?;
    for (i, a) in s.architectures().iter().flatten().enumerate() {
        let name = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch: ScmpArch = name.parse().map_err(|_| {
            field(
                &format!("architectures[{i}]"),
                format!("unknown architecture {name:?}"),
            )
        })?;
        ctx.add_arch(arch)
            .map_err(|e| lib_err(&format!("architectures[{i}]"), e))?;
    }
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let fname = format!("syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &format!("{fname}.action"))?;
        let mut resolved = Vec::new();
        for (k, name) in sc.names().iter().enumerate() {
            match ScmpSyscall::from_name(name) {
                Ok(sys) => resolved.push((k, name, sys)),
                Err(_) if is_linux_syscall(name) => {}
                Err(_) => {
                    return Err(field(
                        &format!("{fname}.names[{k}]"),
                        format!("unknown syscall {name:?}"),
                    ))
                }
            }
        }
        // libseccomp refuses rules that repeat the default action.
        if act == default {
            continue;
        }
        // Conditions on the same argument cannot be ANDed by libseccomp;
        // such a rule becomes one rule per condition (what runc does).
        let args = sc.args().clone().unwrap_or_default();
        let mut conds: Vec<ScmpArgCompare> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut same_index = false;
        for a in &args {
            if !seen.insert(a.index()) {
                same_index = true;
            }
            conds.push(ScmpArgCompare::new(
                a.index() as u32,
                op(a.op(), a.value()),
                if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    a.value_two().unwrap_or(0)
                } else {
                    a.value()
                },
            ));
        }
        for (k, name, sys) in resolved {
            let res = if conds.is_empty() {
                ctx.add_rule(act, sys).map(|_| ())
            } else if same_index {
                conds.iter().try_for_each(|c| {
                    ctx.add_rule_conditional(act, sys, std::slice::from_ref(c))
                        .map(|_| ())
                })
            } else {
                ctx.add_rule_conditional(act, sys, &conds).map(|_| ())
            };
            res.map_err(|e| lib_err(&format!("{fname}.names[{k}] {name}"), e))?;
        }
    }
    let raw = export(&ctx)?;
    let bpf = from_bytes(&raw)
        .ok_or_else(|| Error::Other("seccomp: libseccomp exported a malformed filter".into()))?;
    if bpf.len() > MAX_INSNS {
        return Err(field(
            "syscalls",
            format!(
                "the filter has {} instructions, more than the kernel's {MAX_INSNS}",
                bpf.len()
            ),
        ));
    }
    Ok(Compiled {
        bpf,
        flags,
        listener,
    })
}

/// The BPF program libseccomp generated, as bytes.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>> {
    // Through a memfd: libseccomp 2.5 has no in-memory export.
    // SAFETY: memfd_create with a static name.
    let fd = unsafe { libc::memfd_create(c"berth-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(last_os("memfd_create"));
    }
    // SAFETY: fd is new and ours.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    ctx.export_bpf(&f).map_err(|e| lib_err("export", e))?;
    let mut raw = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut raw))
        .map_err(|e| Error::Os {
            ctx: "reading BPF".into(),
            err: e,
        })?;
    Ok(raw)
}

fn from_bytes(raw: &[u8]) -> Option<Vec<libc::sock_filter>> {
    if raw.is_empty() || !raw.len().is_multiple_of(8) {
        return None;
    }
    Some(
        raw.chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn to_bytes(bpf: &[libc::sock_filter]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bpf.len() * 8);
    for i in bpf {
        v.extend_from_slice(&i.code.to_ne_bytes());
        v.push(i.jt);
        v.push(i.jf);
        v.extend_from_slice(&i.k.to_ne_bytes());
    }
    v
}

/// The cache file for a profile: its canonical JSON plus everything else
/// the BPF depends on (libseccomp's version, the machine, this format).
fn cache_file(dir: &Path, s: &LinuxSeccomp) -> Option<PathBuf> {
    let json = serde_json::to_vec(s).ok()?;
    let v = libseccomp::ScmpVersion::current().ok()?;
    let mut h = Sha256::new();
    h.update(format!(
        "berth-bpf-2 {} libseccomp {}.{}.{} {}\n",
        env!("CARGO_PKG_VERSION"),
        v.major,
        v.minor,
        v.micro,
        std::env::consts::ARCH
    ));
    h.update(&json);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // A file, not a directory, so it never looks like a container.
    Some(dir.join(format!(".seccomp-{hex}.bpf")))
}

/// [`compile`] with the BPF cached in `dir` (the state root): a profile
/// seen before costs one read. The cache is best effort: any problem with
/// it falls back to compiling.
pub fn compile_cached(s: &LinuxSeccomp, dir: &Path) -> Result<Compiled> {
    let Some(path) = cache_file(dir, s) else {
        return compile(s);
    };
    if let Some(bpf) = std::fs::read(&path).ok().and_then(|b| from_bytes(&b)) {
        if bpf.len() <= MAX_INSNS {
            // Only a profile that compiled is cached; the cheap checks
            // (listener, flags) run again because they are not in the file.
            let (flags, listener) = check(s)?;
            return Ok(Compiled {
                bpf,
                flags,
                listener,
            });
        }
    }
    let c = compile(s)?;
    let tmp = dir.join(format!(".seccomp-{}.tmp", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&to_bytes(&c.bpf)))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(c)
}

/// Installs the filter on the calling thread. Returns the notification
/// listener when the profile has `SCMP_ACT_NOTIFY` rules.
pub fn load(c: &Compiled) -> Result<Option<OwnedFd>> {
    let prog = libc::sock_fprog {
        len: c.bpf.len() as u16,
        filter: c.bpf.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at valid BPF for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            c.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(last_os("loading the seccomp filter"));
    }
    if c.flags & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
        // SAFETY: with NEW_LISTENER seccomp returns a new fd we now own.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(r as RawFd) }));
    }
    Ok(None)
}

/// Init side: loads the filter and, for a notifying profile, hands the
/// listener to the runtime (announced first, so the runtime expects a
/// datagram with an fd; the init keeps no copy).
pub fn load_and_hand_over(c: &Compiled, ch: &Channel) -> Result<()> {
    if c.listener.is_none() {
        return load(c).map(|_| ());
    }
    ch.send(&Msg::SeccompListener)?;
    let fd = load(c)?.ok_or_else(|| Error::Other("seccomp: no listener fd".into()))?;
    crate::fdpass::send_fd(ch.raw(), b"seccomp", fd.as_raw_fd())
}

/// Runtime side, after [`Msg::SeccompListener`]: the next datagram carries
/// the listener, or is the init's error.
pub fn recv_listener(ch: &Channel) -> Result<OwnedFd> {
    let (payload, fd) = crate::fdpass::recv_fd(ch.raw())?;
    if let Some(fd) = fd {
        return Ok(fd);
    }
    match serde_json::from_slice::<Msg>(&payload) {
        Ok(Msg::Error(m)) => Err(Error::Init(m)),
        _ if payload.is_empty() => Err(Error::Init(
            "the container's init exited before passing the seccomp listener".into(),
        )),
        _ => Err(Error::Other("sync: expected the seccomp listener".into())),
    }
}

/// Hands the listener to the seccomp agent at `listenerPath`, with the OCI
/// "containerProcessState" (`state` is the container's state JSON).
pub fn send_to_agent(l: &Listener, fd: &OwnedFd, pid: i32, state: serde_json::Value) -> Result<()> {
    let sock = std::os::unix::net::UnixStream::connect(&l.path).map_err(|e| Error::Os {
        ctx: format!("linux.seccomp.listenerPath {}", l.path.display()),
        err: e,
    })?;
    let msg = serde_json::json!({
        "ociVersion": crate::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": l.metadata,
        "state": state,
    });
    crate::fdpass::send_fd(sock.as_raw_fd(), msg.to_string().as_bytes(), fd.as_raw_fd())
}

/// The seccomp part of `berth features`.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "enabled": true,
        "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"],
        "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                      "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
        "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                       "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                           "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn typo_is_an_error_newer_syscall_is_skipped() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "cachestat", "opne"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp.syscalls[0].names[2]"), "{e}");
        assert!(e.contains("opne"), "{e}");
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "cachestat", "open_tree_attr"], "action": "SCMP_ACT_ERRNO"}]
        }));
        compile(&p).unwrap();
    }

    #[test]
    fn notify_needs_a_listener_path() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp.listenerPath"), "{e}");
    }

    #[test]
    fn cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::seccomp_default::profile::<&str>(&[]);
        let a = compile_cached(&p, dir.path()).unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1);
        let b = compile_cached(&p, dir.path()).unwrap();
        assert_eq!(to_bytes(&a.bpf), to_bytes(&b.bpf));
        assert_eq!(a.flags, b.flags);
    }
}
