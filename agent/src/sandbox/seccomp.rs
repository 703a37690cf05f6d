//! The seccomp filter of the sandbox: which system calls a sandboxed program may not make.
//!
//! The namespaces, the unprivileged uid and `--cap-drop ALL` already make almost every call
//! below fail with `EPERM`. The filter is the second wall: it shuts the kernel's riskiest code
//! (its new or rarely exercised interfaces, where privilege escalations have been found) to
//! sandboxed code *before* any permission check runs, so that a kernel bug behind one of these
//! calls cannot be reached from inside.
//!
//! # Policy
//! Default **allow**: interpreters, their libraries and user programs make hundreds of
//! different calls, and an allow-list would break the next runtime version in ways no test
//! here would see. Denied:
//!
//! | calls | answer | why |
//! | --- | --- | --- |
//! | a foreign architecture (`AUDIT_ARCH` other than the agent's: 32-bit calls through `int 0x80` on x86_64, AArch32 on arm64), and x86_64's x32 numbers (bit 30 set) | kill the process | a second syscall table the rules below do not describe: every rule would be bypassable through it |
//! | `kexec_load`, `kexec_file_load`, `init_module`, `finit_module`, `delete_module`, `reboot` | kill the process | replacing or extending the kernel: no program of ours has a reason to try, so trying ends the program |
//! | `ptrace`, `process_vm_readv`, `process_vm_writev`, `kcmp`, `pidfd_getfd`, `process_madvise` | `EPERM` | reading or steering another process (its memory, its fds): the pid namespace hides the agent, but not bwrap's own init (pid 1), which runs as the sandbox's uid: without the filter a program here can `PTRACE_ATTACH` to it (checked on bwrap 0.8), stop it or write to its fds, among them the event fd that reports the program's exit status |
//! | `mount`, `umount2`, `pivot_root`, `chroot`, and the new mount API (`open_tree`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr`) | `EPERM` | changing the filesystem view: bwrap built it, nothing inside may rebuild it |
//! | `unshare`, `setns`, `clone` with any `CLONE_NEW*` flag (`NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET`) | `EPERM` | new namespaces, above all a user namespace, hand a process full capabilities over fresh kernel objects: the classic way from "no privileges" to kernel attack surface. bwrap's `--disable-userns` stops nested user namespaces too; this stops every namespace, before the kernel looks |
//! | `clone3` | `ENOSYS` | its flags sit in a struct in memory, which a seccomp filter cannot read, so the namespace rule above could not hold. `ENOSYS` says "this kernel lacks clone3", on which glibc (2.34+: `pthread_create`, `posix_spawn`) falls back to `clone`, where the rule applies |
//! | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup`, `io_uring_enter`, `io_uring_register` | `EPERM` | large, fast-moving kernel interfaces with a record of privilege escalations (userfaultfd makes kernel races reliable). Runtimes that use io_uring (libuv, in node) fall back to threads on an error |
//! | `keyctl`, `add_key`, `request_key` | `EPERM` | the kernel keyring is not namespaced: keys could outlive the sandbox or be shared with the host's uid |
//! | `open_by_handle_at`, `name_to_handle_at` | `EPERM` | opening files by handle bypasses the mount namespace (the "shocker" container escape) |
//! | `swapon`, `swapoff`, `acct`, `settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex`, `quotactl`, `quotactl_fd`, `syslog`, `vhangup`, `iopl`, `ioperm`, `lookup_dcookie` | `EPERM` | the host's global state: swap, process accounting, the clock, quotas, the kernel log, terminals, I/O ports |
//! | `mbind`, `migrate_pages`, `move_pages` | `EPERM` | NUMA placement of memory, including another process's |
//! | `uselib`, `_sysctl` | `EPERM` | obsolete interfaces, kept by the kernel for binary compatibility only |
//!
//! `EPERM` rather than a kill for everything a runtime or library might *probe*: it sees an
//! ordinary error, says so or falls back (python's `os.unshare` raises `PermissionError`, libuv
//! drops io_uring), and the execution's outcome is the program's own. A kill is kept for calls
//! whose only use inside a sandbox is an attack; the program then ends by `SIGSYS` (signal 31).
//!
//! # Caveats
//! - The syscall numbers are tabled here for x86_64 and aarch64 ([`Arch`]); on any other
//!   architecture there is no filter, and the agent refuses to start with seccomp on.
//! - bwrap applies the filter after its own setup (namespaces, mounts, uid map), to its
//!   pid-namespace init and to the program just before exec, so bwrap itself needs none of
//!   these calls to be allowed.
//! - `WARMPOOL_SANDBOX_SECCOMP=off` runs without the filter; it exists to measure the filter's
//!   cost (`warmpool bench sandbox`), not for production.
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
//!
//! The policy is data ([`DENIED`], [`Arch::number`]) so that another backend can render it in
//! its own terms (nsjail's kafel policy, for instance).

/// What the filter answers a call it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The call fails with this errno, without reaching the kernel's implementation.
    Errno(i32),
    /// The whole process is killed by `SIGSYS` (a core dump is suppressed by `RLIMIT_CORE` 0).
    KillProcess,
}

/// Which calls of a syscall a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// The low 32 bits of the first argument (`clone`'s flags) have any of these bits set.
    FirstArgHasAnyOf(u32),
}

/// One denied syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The kernel's name (as in `unistd.h`, without `__NR_`).
    pub syscall: &'static str,
    pub when: When,
    pub action: Action,
}

/// Every `CLONE_NEW*` flag that `clone` (not only `clone3`) accepts: `NEWNS` 0x00020000,
/// `NEWCGROUP` 0x02000000, `NEWUTS` 0x04000000, `NEWIPC` 0x08000000, `NEWUSER` 0x10000000,
/// `NEWPID` 0x20000000, `NEWNET` 0x40000000. (`CLONE_NEWTIME`, 0x80, shares its bit with the
/// exit signal in `clone` and is only accepted by `clone3` and `unshare`, both denied.)
pub const CLONE_NAMESPACE_FLAGS: u32 = 0x7E02_0000;

const EPERM: Action = Action::Errno(libc::EPERM);

const fn eperm(syscall: &'static str) -> Rule {
    Rule {
        syscall,
        when: When::Always,
        action: EPERM,
    }
}

const fn kill(syscall: &'static str) -> Rule {
    Rule {
        syscall,
        when: When::Always,
        action: Action::KillProcess,
    }
}

/// The policy: every call not listed here is allowed. Grouped as in the module's table.
pub const DENIED: &[Rule] = &[
    // Replacing or extending the kernel.
    kill("kexec_load"),
    kill("kexec_file_load"),
    kill("init_module"),
    kill("finit_module"),
    kill("delete_module"),
    kill("reboot"),
    // Other processes.
    eperm("ptrace"),
    eperm("process_vm_readv"),
    eperm("process_vm_writev"),
    eperm("kcmp"),
    eperm("pidfd_getfd"),
    eperm("process_madvise"),
    // The filesystem view.
    eperm("mount"),
    eperm("umount2"),
    eperm("pivot_root"),
    eperm("chroot"),
    eperm("open_tree"),
    eperm("move_mount"),
    eperm("fsopen"),
    eperm("fsconfig"),
    eperm("fsmount"),
    eperm("fspick"),
    eperm("mount_setattr"),
    // Namespaces.
    eperm("unshare"),
    eperm("setns"),
    Rule {
        syscall: "clone",
        when: When::FirstArgHasAnyOf(CLONE_NAMESPACE_FLAGS),
        action: EPERM,
    },
    Rule {
        syscall: "clone3",
        when: When::Always,
        action: Action::Errno(libc::ENOSYS),
    },
    // Kernel attack surface.
    eperm("bpf"),
    eperm("perf_event_open"),
    eperm("userfaultfd"),
    eperm("io_uring_setup"),
    eperm("io_uring_enter"),
    eperm("io_uring_register"),
    // The keyring.
    eperm("keyctl"),
    eperm("add_key"),
    eperm("request_key"),
    // Files by handle.
    eperm("open_by_handle_at"),
    eperm("name_to_handle_at"),
    // The host's global state.
    eperm("swapon"),
    eperm("swapoff"),
    eperm("acct"),
    eperm("settimeofday"),
    eperm("clock_settime"),
    eperm("clock_adjtime"),
    eperm("adjtimex"),
    eperm("quotactl"),
    eperm("quotactl_fd"),
    eperm("syslog"),
    eperm("vhangup"),
    eperm("iopl"),
    eperm("ioperm"),
    eperm("lookup_dcookie"),
    // NUMA.
    eperm("mbind"),
    eperm("migrate_pages"),
    eperm("move_pages"),
    // Obsolete.
    eperm("uselib"),
    eperm("_sysctl"),
];

/// An architecture whose syscall numbers are tabled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The agent's own architecture, if tabled.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// `AUDIT_ARCH_*` of `linux/audit.h`, which the kernel puts in `seccomp_data.arch`.
    fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => 0xC000_003E,
            Arch::Aarch64 => 0xC000_00B7,
        }
    }

    /// The number of a syscall of [`DENIED`] on this architecture; `None` for one it does not
    /// have (aarch64 has no `iopl`, `ioperm`, `uselib` or `_sysctl`) or a name not in the
    /// policy. From `asm/unistd_64.h` (x86_64) and `asm-generic/unistd.h` (aarch64).
    pub fn number(self, syscall: &str) -> Option<u32> {
        let (x86_64, aarch64) = match syscall {
            "kexec_load" => (246, 104),
            "kexec_file_load" => (320, 294),
            "init_module" => (175, 105),
            "finit_module" => (313, 273),
            "delete_module" => (176, 106),
            "reboot" => (169, 142),
            "ptrace" => (101, 117),
            "process_vm_readv" => (310, 270),
            "process_vm_writev" => (311, 271),
            "kcmp" => (312, 272),
            "pidfd_getfd" => (438, 438),
            "process_madvise" => (440, 440),
            "mount" => (165, 40),
            "umount2" => (166, 39),
            "pivot_root" => (155, 41),
            "chroot" => (161, 51),
            "open_tree" => (428, 428),
            "move_mount" => (429, 429),
            "fsopen" => (430, 430),
            "fsconfig" => (431, 431),
            "fsmount" => (432, 432),
            "fspick" => (433, 433),
            "mount_setattr" => (442, 442),
            "unshare" => (272, 97),
            "setns" => (308, 268),
            "clone" => (56, 220),
            "clone3" => (435, 435),
            "bpf" => (321, 280),
            "perf_event_open" => (298, 241),
            "userfaultfd" => (323, 282),
            "io_uring_setup" => (425, 425),
            "io_uring_enter" => (426, 426),
            "io_uring_register" => (427, 427),
            "keyctl" => (250, 219),
            "add_key" => (248, 217),
            "request_key" => (249, 218),
            "open_by_handle_at" => (304, 265),
            "name_to_handle_at" => (303, 264),
            "swapon" => (167, 224),
            "swapoff" => (168, 225),
            "acct" => (163, 89),
            "settimeofday" => (164, 170),
            "clock_settime" => (227, 112),
            "clock_adjtime" => (305, 266),
            "adjtimex" => (159, 171),
            "quotactl" => (179, 60),
            "quotactl_fd" => (443, 443),
            "syslog" => (103, 116),
            "vhangup" => (153, 58),
            "lookup_dcookie" => (212, 18),
            "mbind" => (237, 235),
            "migrate_pages" => (256, 238),
            "move_pages" => (279, 239),
            "iopl" => return (self == Arch::X86_64).then_some(172),
            "ioperm" => return (self == Arch::X86_64).then_some(173),
            "uselib" => return (self == Arch::X86_64).then_some(134),
            "_sysctl" => return (self == Arch::X86_64).then_some(156),
            _ => return None,
        };
        Some(match self {
            Arch::X86_64 => x86_64,
            Arch::Aarch64 => aarch64,
        })
    }
}

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
    fn every_rule_names_a_syscall_of_a_tabled_architecture_once() {
        let mut seen = std::collections::HashSet::new();
        for rule in DENIED {
            assert!(seen.insert(rule.syscall), "{} twice", rule.syscall);
            assert!(
                Arch::X86_64.number(rule.syscall).is_some()
                    || Arch::Aarch64.number(rule.syscall).is_some(),
                "{} has no number",
                rule.syscall
            );
        }
        let missing_on_arm: Vec<_> = DENIED
            .iter()
            .filter(|r| Arch::Aarch64.number(r.syscall).is_none())
            .map(|r| r.syscall)
            .collect();
        assert_eq!(missing_on_arm, ["iopl", "ioperm", "uselib", "_sysctl"]);
    }

    /// The tabled numbers of the host's architecture against the libc crate's.
    #[test]
    fn the_native_numbers_match_libc() {
        let Some(arch) = Arch::native() else { return };
        macro_rules! check {
            ($($name:ident),* $(,)?) => {{
                $(assert_eq!(
                    arch.number(stringify!($name).trim_start_matches("SYS_")).map(i64::from),
                    Some(libc::$name as i64),
                    stringify!($name)
                );)*
            }};
        }
        check!(
            SYS_kexec_load,
            SYS_kexec_file_load,
            SYS_init_module,
            SYS_finit_module,
            SYS_delete_module,
            SYS_reboot,
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_kcmp,
            SYS_pidfd_getfd,
            SYS_process_madvise,
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_chroot,
            SYS_open_tree,
            SYS_move_mount,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_mount_setattr,
            SYS_unshare,
            SYS_setns,
            SYS_clone,
            SYS_clone3,
            SYS_bpf,
            SYS_perf_event_open,
            SYS_userfaultfd,
            SYS_io_uring_setup,
            SYS_io_uring_enter,
            SYS_io_uring_register,
            SYS_keyctl,
            SYS_add_key,
            SYS_request_key,
            SYS_open_by_handle_at,
            SYS_name_to_handle_at,
            SYS_swapon,
            SYS_swapoff,
            SYS_acct,
            SYS_settimeofday,
            SYS_clock_settime,
            SYS_clock_adjtime,
            SYS_adjtimex,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_syslog,
            SYS_vhangup,
            SYS_lookup_dcookie,
            SYS_mbind,
            SYS_migrate_pages,
            SYS_move_pages,
        );
        #[cfg(target_arch = "x86_64")]
        check!(SYS_iopl, SYS_ioperm, SYS_uselib, SYS__sysctl);
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
        let mut filter: Vec<libc::sock_filter> = program
            .instructions()
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
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
