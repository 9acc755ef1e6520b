//! cgroup v2 device control: v2 has no `devices.allow`/`devices.deny` files;
//! the kernel instead runs a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to
//! the cgroup on every open/mknod of a device node. This module compiles the
//! OCI device rules (v1-shaped, "the last matching rule wins") into such a
//! program by hand (a few dozen instructions; no eBPF framework needed) and
//! attaches it with `bpf(2)`.
//!
//! The program decides each requested access bit (mknod, read, write)
//! separately, as v1 does: for a bit, the last rule that names it and matches
//! the device decides; when no rule matches, access is denied (berth's v1
//! path writes a deny-all first, and runc's v2 filter starts from deny too).
//! An open for read and write is allowed only if both bits are. A
//! privileged container's allow-all rule ("a", all access) matches
//! everything.

use crate::{Error, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JEQ64_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
/// 32-bit compare: majors and minors are u32, and a 64-bit compare would
/// sign-extend an immediate above i32::MAX.
const JNE32_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JA: u8 = 0x05; // BPF_JMP | BPF_JA
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
// access_type = (access << 16) | type.
const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1; // BPF_DEVCG_ACC_MKNOD
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

// Registers: r1 is the context; the rest hold its decoded fields.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// A device rule reduced to what the program compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// None: any type (char and block).
    typ: Option<i32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: i32,
}

fn convert(r: &LinuxDeviceCgroup, i: usize) -> Result<Option<Rule>> {
    let field = |msg: String| Error::Other(format!("linux.resources.devices[{i}]: {msg}"));
    let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => None,
        LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
        LinuxDeviceType::B => Some(DEV_BLOCK),
        // FIFOs are not device nodes: the kernel never asks about them.
        LinuxDeviceType::P => return Ok(None),
    };
    let num = |v: Option<i64>, name: &str| -> Result<Option<u32>> {
        match v {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| field(format!("{name} {n} is out of range"))),
        }
    };
    let mut access = 0;
    for c in r.access().as_deref().unwrap_or("rwm").chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(field(format!("access: unknown permission {c:?}"))),
        };
    }
    Ok(Some(Rule {
        allow: r.allow(),
        typ,
        major: num(r.major(), "major")?,
        minor: num(r.minor(), "minor")?,
        access,
    }))
}

/// Emits instructions with forward jumps to labels, patched at the end.
struct Asm {
    code: Vec<Insn>,
    /// (instruction index, label) of every jump.
    jumps: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn emit(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn jump(&mut self, code: u8, reg: u8, imm: i32, l: usize) {
        self.jumps.push((self.code.len(), l));
        self.emit(insn(code, reg, 0, 0, imm));
    }
    fn ret(&mut self, v: i32) {
        self.emit(insn(MOV64_K, R0, 0, 0, v));
        self.emit(insn(EXIT, 0, 0, 0, 0));
    }
    fn finish(mut self) -> Result<Vec<Insn>> {
        for (at, l) in &self.jumps {
            let target = self.labels[*l].expect("every label is bound");
            let off = i16::try_from(target as i64 - *at as i64 - 1)
                .map_err(|_| Error::Other("linux.resources.devices: too many rules".into()))?;
            self.code[*at].off = off;
        }
        Ok(self.code)
    }
}

/// Compiles OCI device rules into a cgroup device program.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>> {
    let mut conv = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if let Some(r) = convert(r, i)? {
            conv.push(r);
        }
    }
    let mut a = Asm {
        code: Vec::new(),
        jumps: Vec::new(),
        labels: Vec::new(),
    };
    // Decode the context: type, access, major, minor.
    a.emit(insn(LDX_MEM_W, R_TYPE, R1, 0, 0));
    a.emit(insn(MOV64_X, R_ACCESS, R_TYPE, 0, 0));
    a.emit(insn(AND64_K, R_TYPE, 0, 0, 0xffff));
    a.emit(insn(RSH64_K, R_ACCESS, 0, 0, 16));
    a.emit(insn(LDX_MEM_W, R_MAJOR, R1, 4, 0));
    a.emit(insn(LDX_MEM_W, R_MINOR, R1, 8, 0));
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        let next_bit = a.label();
        // Skip this bit unless it was requested.
        a.emit(insn(MOV64_X, R0, R_ACCESS, 0, 0));
        a.emit(insn(AND64_K, R0, 0, 0, bit));
        a.jump(JEQ64_K, R0, 0, next_bit);
        // Last matching rule wins: test them newest first.
        let mut decided = false;
        for r in conv.iter().rev().filter(|r| r.access & bit != 0) {
            let catch_all = r.typ.is_none() && r.major.is_none() && r.minor.is_none();
            if catch_all {
                // Older rules can never be reached (the verifier rejects
                // unreachable instructions): decide here and stop.
                if !r.allow {
                    a.ret(0);
                }
                decided = true;
                break;
            }
            let next_rule = a.label();
            if let Some(t) = r.typ {
                a.jump(JNE32_K, R_TYPE, t, next_rule);
            }
            if let Some(m) = r.major {
                a.jump(JNE32_K, R_MAJOR, m as i32, next_rule);
            }
            if let Some(m) = r.minor {
                a.jump(JNE32_K, R_MINOR, m as i32, next_rule);
            }
            if r.allow {
                a.jump(JA, 0, 0, next_bit);
            } else {
                a.ret(0);
            }
            a.bind(next_rule);
        }
        if !decided {
            // No rule decided this bit.
            a.ret(0);
        }
        a.bind(next_bit);
    }
    a.ret(1);
    a.finish()
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs may sit on one cgroup; used so a new program is in
/// place before the old one goes (no window without a filter on update).
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a properly laid out bpf_attr prefix of the given size;
    // the kernel zero-extends shorter structs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"berth\0");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new fd we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            Err(Error::Other(format!(
                "loading the device filter (linux.resources.devices): {e}: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )))
        }
    }
}

/// Ids of the device programs attached to the cgroup `dir`.
fn attached(dir: RawFd) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut q = QueryAttr {
        target_fd: dir as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q)?;
    ids.truncate(q.prog_cnt as usize);
    Ok(ids)
}

fn prog_id(fd: RawFd) -> Option<u32> {
    // struct bpf_prog_info starts with u32 type, u32 id.
    let mut info = [0u32; 2];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut a = InfoAttr {
        bpf_fd: fd as u32,
        info_len: 8,
        info: info.as_mut_ptr() as u64,
    };
    bpf(15, &mut a).ok()?; // BPF_OBJ_GET_INFO_BY_FD
    Some(info[1])
}

/// Loads `prog` and makes it the only device program of the cgroup `dir`
/// (an open directory fd): attached first, then older ones (from an earlier
/// apply) detached.
pub fn attach(dir: RawFd, prog: &[Insn]) -> Result<()> {
    let fd = load(prog)?;
    let mut at = AttachAttr {
        target_fd: dir as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut at)
        .map_err(|e| Error::Other(format!("attaching the device filter: {e}")))?;
    let mine = prog_id(fd.as_raw_fd());
    for id in attached(dir).unwrap_or_default() {
        if Some(id) == mine {
            continue;
        }
        let mut g = [id, 0, 0, 0];
        let Ok(old) = bpf(BPF_PROG_GET_FD_BY_ID, &mut g) else {
            continue;
        };
        // SAFETY: a new fd from the kernel.
        let old = unsafe { OwnedFd::from_raw_fd(old as RawFd) };
        let mut d = AttachAttr {
            target_fd: dir as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut d)
            .map_err(|e| Error::Other(format!("detaching the old device filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        t: LinuxDeviceType,
        maj: Option<i64>,
        min: Option<i64>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(t)
            .access(acc.to_string());
        if let Some(m) = maj {
            b = b.major(m);
        }
        if let Some(m) = min {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// Runs the program in a tiny interpreter of the opcodes it uses, so the
    /// rules' meaning is tested without a kernel.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> u64 {
        all_reachable(p);
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = i.imm as i64 as u64,
                AND64_K => r[dst] &= i.imm as i64 as u64,
                RSH64_K => r[dst] >>= i.imm,
                JEQ64_K if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
                JNE32_K if r[dst] as u32 != i.imm as u32 => pc += i.off as usize,
                JEQ64_K | JNE32_K => {}
                JA => pc += i.off as usize,
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// The kernel's verifier refuses programs with unreachable instructions.
    fn all_reachable(p: &[Insn]) {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if seen[pc] {
                continue;
            }
            seen[pc] = true;
            let i = p[pc];
            let target = (pc as i64 + 1 + i.off as i64) as usize;
            match i.code {
                EXIT => {}
                JA => todo.push(target),
                JEQ64_K | JNE32_K => todo.extend([pc + 1, target]),
                _ => todo.push(pc + 1),
            }
        }
        let dead: Vec<usize> = (0..p.len()).filter(|i| !seen[*i]).collect();
        assert!(dead.is_empty(), "unreachable instructions {dead:?}");
    }

    #[test]
    fn no_rules_deny_everything_and_allow_all_allows_all() {
        let p = compile(&[]).unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
        let p = compile(&[rule(true, LinuxDeviceType::A, None, None, "rwm")]).unwrap();
        assert_eq!(
            run(&p, DEV_BLOCK, ACC_READ | ACC_WRITE | ACC_MKNOD, 8, 0),
            1
        );
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 4095, 1 << 20), 1);
    }

    #[test]
    fn deny_all_then_allow_a_few() {
        use LinuxDeviceType::*;
        let p = compile(&[
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(3), "rw"),
            rule(true, C, None, None, "m"),
            rule(true, C, Some(136), None, "rwm"),
        ])
        .unwrap();
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1, "/dev/null rw");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 1, "mknod of any char");
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 0, "no block mknod");
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 5), 0, "/dev/zero not listed");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 1, 3), 0, "type matters");
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1, "pts wildcard minor");
    }

    #[test]
    fn later_rules_override_earlier_ones_per_access_bit() {
        use LinuxDeviceType::*;
        let p = compile(&[
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(false, C, Some(1), Some(3), "w"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 0);
        // Unmatched devices are denied.
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 8, 0), 0);
        // Split allows add up: r from one rule, w from another.
        let p = compile(&[
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(3), "r"),
            rule(true, C, Some(1), Some(3), "w"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 0);
        // A deny-all in the middle cancels what came before it.
        let p = compile(&[
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(5), "rwm"),
        ])
        .unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let e = compile(&[rule(true, LinuxDeviceType::C, Some(1), Some(3), "rx")]).unwrap_err();
        assert!(e.to_string().contains("linux.resources.devices[0]"), "{e}");
        let e = compile(&[rule(true, LinuxDeviceType::C, Some(-5), None, "r")]).unwrap_err();
        assert!(e.to_string().contains("major -5"), "{e}");
    }
}
