//! seccomp: the OCI `linux.seccomp` object compiled to BPF with libseccomp in
//! the runtime process (so errors surface before anything is created), then
//! loaded by the container's init with seccomp(2) right before execve.

use crate::error::{last_os, Error, Result};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::io::{Read, Seek};
use std::os::fd::FromRawFd;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_uint = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_uint = 1 << 2;
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_uint = 1 << 5;

/// A filter ready to load: BPF instructions and seccomp(2) flags.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub bpf: Vec<libc::sock_filter>,
    pub flags: libc::c_uint,
}

fn field(name: &str, msg: impl Into<String>) -> Error {
    Error::config("config.json", format!("linux.seccomp.{name}"), msg)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, fieldname: &str) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(field(fieldname, "SCMP_ACT_NOTIFY is not supported yet"));
        }
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

/// Compiles the profile. Syscall names libseccomp does not know are skipped
/// (profiles list syscalls of newer kernels, as runc tolerates).
pub fn compile(s: &LinuxSeccomp) -> Result<Compiled> {
    let default = action(s.default_action(), s.default_errno_ret(), "defaultAction")?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| lib_err("init", e))?;
    // berth sets no_new_privs itself, from process.noNewPrivileges.
    ctx.set_ctl_nnp(false).map_err(|e| lib_err("nnp", e))?;
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
    let mut flags = 0;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
            // Meaningless for a single-threaded init.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
        };
    }
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let fname = format!("syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &format!("{fname}.action"))?;
        if act == default {
            continue;
        }
        // Conditions on the same argument cannot be ANDed by libseccomp;
        // like runc, such a rule becomes one rule per condition.
        let args = sc.args().clone().unwrap_or_default();
        let mut conds: Vec<ScmpArgCompare> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut same_index = false;
        for (j, a) in args.iter().enumerate() {
            if a.index() > 5 {
                return Err(field(&format!("{fname}.args[{j}].index"), "must be 0..5"));
            }
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
        for (k, name) in sc.names().iter().enumerate() {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                continue;
            };
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
    // Export through a memfd: libseccomp 2.5 has no in-memory export.
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
    let n = raw.len() / std::mem::size_of::<libc::sock_filter>();
    let mut bpf = Vec::with_capacity(n);
    for c in raw.chunks_exact(8) {
        bpf.push(libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        });
    }
    Ok(Compiled { bpf, flags })
}

/// Installs the filter on the calling thread.
pub fn load(c: &Compiled) -> Result<()> {
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
    Ok(())
}

/// The seccomp part of `berth features`.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "enabled": true,
        "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
        "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                      "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
        "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                       "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                           "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    })
}
