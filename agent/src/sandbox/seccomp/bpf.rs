//! The policy of `seccomp` compiled to classic BPF: the program bwrap loads from its
//! `--seccomp FD`, and (with no rules) the architecture lock that nsjail's child loads between
//! fork and exec (see `preexec`).
//!
//! # The program
//! Classic BPF as `--seccomp FD` wants it: an array of `struct sock_filter` in native byte
//! order, read from a memfd. Its shape, for the agent's architecture:
//! ```text
//! load arch;  arch != native      -> KILL_PROCESS
//! load nr;    nr >= 0x40000000    -> KILL_PROCESS        (x86_64 only: x32)
//! nr == ptrace                    -> ERRNO(EPERM)        (one pair per always-denied call)
//! ...
//! nr == clone: load args[0];  args[0] & CLONE_NEW* -> ERRNO(EPERM);  load nr again
//! ALLOW
//! ```
//! Every jump skips at most four instructions, whatever the number of rules. Since Linux 5.11
//! the kernel caches, per syscall number, a verdict that does not depend on the arguments: every
//! allowed call but `clone` then costs nothing, however long the program.

use super::{Action, Arch, Rule, When, DENIED};

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes of linux/bpf_common.h, and the seccomp return values of linux/seccomp.h.
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_K: u16 = 0x00;
const LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
const JEQ_K: u16 = BPF_JMP | 0x10 | BPF_K;
const JGE_K: u16 = BPF_JMP | 0x30 | BPF_K;
const JSET_K: u16 = BPF_JMP | 0x40 | BPF_K;
const RET_K: u16 = BPF_RET | BPF_K;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7FFF_0000;
/// Offsets in `struct seccomp_data`: `int nr; __u32 arch; __u64 instruction_pointer; __u64
/// args[6]`. Both tabled architectures are little-endian: the low half of `args[0]` comes first.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;
/// x86_64's x32 ABI: the same `AUDIT_ARCH`, numbers with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret(action: Action) -> Insn {
    let k = match action {
        // errno is 1..=4095: it fits the 16-bit data field.
        Action::Errno(errno) => RET_ERRNO | (errno as u32 & 0xFFFF),
        Action::KillProcess => RET_KILL_PROCESS,
    };
    insn(RET_K, 0, 0, k)
}

/// A compiled filter for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(Vec<Insn>);

impl Program {
    #[cfg(test)]
    pub fn instructions(&self) -> &[Insn] {
        &self.0
    }

    /// The bytes bwrap reads from its `--seccomp` fd: the instructions in native byte order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 * self.0.len());
        for i in &self.0 {
            bytes.extend_from_slice(&i.code.to_ne_bytes());
            bytes.push(i.jt);
            bytes.push(i.jf);
            bytes.extend_from_slice(&i.k.to_ne_bytes());
        }
        bytes
    }

    /// The instructions as the kernel's own `struct sock_filter`s, for a `PR_SET_SECCOMP` made
    /// by the agent itself (nsjail's architecture lock, loaded by `preexec` in the forked
    /// child). Built before the fork: the child may not allocate.
    pub fn sock_filters(&self) -> Vec<libc::sock_filter> {
        self.0
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    }
}

/// The architecture check alone (a foreign ABI, and x86_64's x32 numbers, kill; everything
/// else is allowed): the part of the policy that nsjail's Kafel cannot express (see `kafel`).
pub fn arch_lock(arch: Arch) -> Program {
    compile(arch, &[])
}

/// Compiles `rules` for `arch` (see the module doc for the program's shape). A rule for a
/// syscall that `arch` does not have is left out.
pub fn compile(arch: Arch, rules: &[Rule]) -> Program {
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, OFFSET_ARCH),
        insn(JEQ_K, 1, 0, arch.audit_arch()),
        ret(Action::KillProcess),
        insn(LD_W_ABS, 0, 0, OFFSET_NR),
    ];
    if arch == Arch::X86_64 {
        p.push(insn(JGE_K, 0, 1, X32_SYSCALL_BIT));
        p.push(ret(Action::KillProcess));
    }
    for rule in rules {
        let Some(nr) = arch.number(rule.syscall) else {
            continue;
        };
        match rule.when {
            When::Always => {
                p.push(insn(JEQ_K, 0, 1, nr));
                p.push(ret(rule.action));
            }
            When::FirstArgHasAnyOf(mask) => {
                // Not this syscall: skip the four below, the accumulator still holds nr.
                p.push(insn(JEQ_K, 0, 4, nr));
                p.push(insn(LD_W_ABS, 0, 0, OFFSET_ARG0_LOW));
                p.push(insn(JSET_K, 0, 1, mask));
                p.push(ret(rule.action));
                // The flags did not match: restore nr for the rules that follow.
                p.push(insn(LD_W_ABS, 0, 0, OFFSET_NR));
            }
        }
    }
    p.push(insn(RET_K, 0, 0, RET_ALLOW));
    Program(p)
}

/// The policy compiled for the agent's architecture; `None` where no syscall table exists.
pub fn native_program() -> Option<Program> {
    Arch::native().map(|arch| compile(arch, DENIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel hands a filter.
    struct Call {
        arch: u32,
        nr: u32,
        arg0: u64,
    }

    /// A classic-BPF interpreter for the instructions `compile` emits; panics on any other,
    /// and on a jump or fall-through past the end (which the kernel's verifier would refuse).
    fn evaluate(program: &Program, call: &Call) -> u32 {
        let load = |offset: u32| match offset {
            OFFSET_NR => call.nr,
            OFFSET_ARCH => call.arch,
            OFFSET_ARG0_LOW => call.arg0 as u32,
            other => panic!("load from an unexpected offset {other}"),
        };
        let p = program.instructions();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p
                .get(pc)
                .unwrap_or_else(|| panic!("ran off the end at {pc}"));
            let jump = |taken: bool| pc + 1 + usize::from(if taken { i.jt } else { i.jf });
            pc = match i.code {
                LD_W_ABS => {
                    acc = load(i.k);
                    pc + 1
                }
                JEQ_K => jump(acc == i.k),
                JGE_K => jump(acc >= i.k),
                JSET_K => jump(acc & i.k != 0),
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            };
        }
    }

    fn verdict(arch: Arch, syscall: &str, arg0: u64) -> u32 {
        let nr = arch.number(syscall).unwrap();
        evaluate(
            &compile(arch, DENIED),
            &Call {
                arch: arch.audit_arch(),
                nr,
                arg0,
            },
        )
    }

    const EPERM_RET: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS_RET: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn each_denied_call_gets_its_answer_on_both_architectures() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for rule in DENIED {
                if arch.number(rule.syscall).is_none() {
                    continue;
                }
                let arg0 = match rule.when {
                    When::Always => 0,
                    When::FirstArgHasAnyOf(mask) => u64::from(mask & mask.wrapping_neg()),
                };
                let expected = match rule.action {
                    Action::Errno(e) => RET_ERRNO | e as u32,
                    Action::KillProcess => RET_KILL_PROCESS,
                };
                assert_eq!(
                    verdict(arch, rule.syscall, arg0),
                    expected,
                    "{arch:?} {rule:?}"
                );
            }
        }
    }

    #[test]
    fn clone_is_denied_only_with_a_namespace_flag() {
        // What glibc's fork and pthread_create pass: no namespace flag.
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        for arch in [Arch::X86_64, Arch::Aarch64] {
            assert_eq!(verdict(arch, "clone", fork), RET_ALLOW);
            assert_eq!(verdict(arch, "clone", thread), RET_ALLOW);
            // High bits of the argument do not hide a flag in the low ones.
            assert_eq!(
                verdict(arch, "clone", fork | 0xFFFF_0000_0000_0000),
                RET_ALLOW
            );
            for flag in [
                libc::CLONE_NEWUSER,
                libc::CLONE_NEWNS,
                libc::CLONE_NEWPID,
                libc::CLONE_NEWNET,
                libc::CLONE_NEWIPC,
                libc::CLONE_NEWUTS,
                libc::CLONE_NEWCGROUP,
            ] {
                assert_eq!(verdict(arch, "clone", fork | flag as u64), EPERM_RET);
            }
            assert_eq!(verdict(arch, "clone3", 0), ENOSYS_RET);
        }
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        // (x86_64, aarch64) numbers of read, write, openat, mmap, execve, wait4, exit_group.
        for (x86_64, aarch64) in [
            (0, 63),
            (1, 64),
            (257, 56),
            (9, 222),
            (59, 221),
            (61, 260),
            (231, 94),
        ] {
            for (arch, nr) in [(Arch::X86_64, x86_64), (Arch::Aarch64, aarch64)] {
                let call = Call {
                    arch: arch.audit_arch(),
                    nr,
                    arg0: 0,
                };
                assert_eq!(
                    evaluate(&compile(arch, DENIED), &call),
                    RET_ALLOW,
                    "{arch:?} {nr}"
                );
            }
        }
    }

    #[test]
    fn a_foreign_architecture_and_x32_calls_are_killed() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
        let x86 = compile(Arch::X86_64, DENIED);
        let arm = compile(Arch::Aarch64, DENIED);
        for (program, arch) in [
            (&x86, AUDIT_ARCH_I386),
            (&x86, Arch::Aarch64.audit_arch()),
            (&arm, AUDIT_ARCH_ARM),
            (&arm, Arch::X86_64.audit_arch()),
        ] {
            // write(2): allowed natively, not through another table.
            let call = Call {
                arch,
                nr: 4,
                arg0: 0,
            };
            assert_eq!(evaluate(program, &call), RET_KILL_PROCESS);
        }
        let x32_write = Call {
            arch: Arch::X86_64.audit_arch(),
            nr: X32_SYSCALL_BIT | 1,
            arg0: 0,
        };
        assert_eq!(evaluate(&x86, &x32_write), RET_KILL_PROCESS);
    }

    #[test]
    fn the_bytes_are_sock_filters_in_native_order() {
        let program = compile(Arch::X86_64, DENIED);
        let bytes = program.to_bytes();
        assert_eq!(bytes.len(), 8 * program.instructions().len());
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let last = &bytes[bytes.len() - 8..];
        assert_eq!(u32::from_ne_bytes(last[4..].try_into().unwrap()), RET_ALLOW);
        assert!(program.instructions().len() < 4096, "BPF_MAXINSNS");
    }

    /// Installs the native filter in a forked child and makes real calls: the kernel accepts
    /// the program, and answers as the policy says.
    #[test]
    fn the_kernel_accepts_the_filter_and_applies_it() {
        let Some(program) = native_program() else {
            eprintln!("SKIPPED: no syscall table for this architecture");
            return;
        };
        let mut filter = program.sock_filters();
        let fprog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // Exit codes of the child: 0 all as expected, else the number of the failed check.
        // SAFETY: the child makes raw syscalls only, then _exits (async-signal-safe).
        let run_child = |kill_check: bool| unsafe {
            match libc::fork() {
                -1 => panic!("fork: {}", std::io::Error::last_os_error()),
                0 => {
                    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || libc::prctl(libc::PR_SET_SECCOMP, 2, &fprog as *const _, 0, 0) != 0
                    {
                        libc::_exit(10);
                    }
                    if kill_check {
                        libc::syscall(libc::SYS_init_module, 0, 0, 0);
                        libc::_exit(11); // not reached: the filter kills
                    }
                    if libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) != -1
                        || errno() != libc::EPERM
                    {
                        libc::_exit(1);
                    }
                    if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                        libc::_exit(2);
                    }
                    if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                        libc::_exit(3);
                    }
                    if libc::getppid() <= 0 {
                        libc::_exit(4);
                    }
                    libc::_exit(0)
                }
                pid => {
                    let mut status = 0;
                    assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                    status
                }
            }
        };
        let status = run_child(false);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the filtered child failed check {}",
            libc::WEXITSTATUS(status)
        );
        let status = run_child(true);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "init_module did not kill the child: status {status:#x}"
        );
    }
}
