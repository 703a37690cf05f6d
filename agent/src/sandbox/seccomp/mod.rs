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
//! # The renderers
//! The policy is data ([`DENIED`], [`Arch::number`]), rendered for each backend next to it:
//! - `bpf`: the classic-BPF program bwrap loads (`--seccomp FD`), and the architecture lock
//!   nsjail's child loads before it execs nsjail (see `nsjail`);
//! - `kafel`: the Kafel policy text nsjail compiles (`seccomp_string`), plus a `personality`
//!   rule that classic BPF here does not express yet.
//!
//! Both render the same [`DENIED`] table, so the two backends cannot drift apart.

pub mod bpf;
pub mod kafel;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
