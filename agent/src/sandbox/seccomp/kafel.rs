//! The policy of `seccomp` rendered in Kafel, the policy language nsjail compiles itself
//! (its `seccomp_string`), plus a `personality` rule.
//!
//! Kafel checks the architecture but knows nothing of x86_64's x32 numbers (bit 30 set, on
//! kernels built with `CONFIG_X86_X32_ABI`), through which every rule could be bypassed: so
//! nsjail's child also loads `bpf::arch_lock` before it execs nsjail (see `nsjail`).

use super::{Action, Arch, When, DENIED};

/// `personality` with any persona but the usual ones fails with EPERM: Linux (0), 32-bit
/// (`PER_LINUX32`, 0x8), with `UNAME26` (0x20000, 0x20008), and the query 0xffffffff, compared
/// on the low 32 bits, which is what the kernel reads. An odd persona (`READ_IMPLIES_EXEC`,
/// `MMAP_PAGE_ZERO`, `ADDR_NO_RANDOMIZE`) weakens the program's own memory protections, a
/// classic step of kernel exploits. Kafel only: `When` has no "argument not in" condition
/// yet, so the BPF program (bwrap's filter) lacks this rule.
const PERSONALITY_RULE: &str = "(persona) { persona != 0 && persona != 0x8 && persona != 0x20000 \
     && persona != 0x20008 && (persona & 0xffffffff) != 0xffffffff }";

/// The policy of `seccomp` ([`DENIED`], bwrap's too), rendered in Kafel for nsjail's
/// `seccomp_string`, plus [`PERSONALITY_RULE`]. Syscalls go by number (`SYSCALL[n] /* name */`,
/// numbers from `Arch`): Kafel's own names differ in places (`umount2` is its `umount`) and
/// lack some (`_sysctl`), and an unknown name would fail every start. Kafel adds its own
/// architecture check (a foreign ABI is killed); x86_64's x32 numbers are the architecture
/// lock's (see the module docs).
pub fn policy(arch: Arch) -> String {
    let mut kill = Vec::new();
    let mut errno: Vec<(i32, Vec<String>)> = Vec::new();
    for rule in DENIED {
        let Some(nr) = arch.number(rule.syscall) else {
            continue;
        };
        let matcher = match rule.when {
            When::Always => format!("SYSCALL[{nr}] /* {} */", rule.syscall),
            When::FirstArgHasAnyOf(mask) => format!(
                "SYSCALL[{nr}](arg0) {{ (arg0 & {mask:#x}) != 0 }} /* {} */",
                rule.syscall
            ),
        };
        match rule.action {
            Action::KillProcess => kill.push(matcher),
            Action::Errno(e) => match errno.iter_mut().find(|(n, _)| *n == e) {
                Some((_, list)) => list.push(matcher),
                None => errno.push((e, vec![matcher])),
            },
        }
    }
    let personality = match arch {
        Arch::X86_64 => 135,
        Arch::Aarch64 => 92,
    };
    let eperm = format!("SYSCALL[{personality}]{PERSONALITY_RULE} /* personality */");
    match errno.iter_mut().find(|(n, _)| *n == libc::EPERM) {
        Some((_, list)) => list.push(eperm),
        None => errno.push((libc::EPERM, vec![eperm])),
    }
    let mut policy = String::new();
    let mut block = |action: &str, matchers: &[String]| {
        if matchers.is_empty() {
            return;
        }
        policy.push_str(action);
        policy.push_str(" {\n  ");
        policy.push_str(&matchers.join(",\n  "));
        policy.push_str("\n}\n");
    };
    block("KILL_PROCESS", &kill);
    for (e, matchers) in &errno {
        block(&format!("ERRNO({e})"), matchers);
    }
    policy.push_str("DEFAULT ALLOW\n");
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_in_the_block_of_its_action_by_number() {
        let arch = Arch::native().expect("a syscall table for this architecture");
        let policy = policy(arch);
        for rule in DENIED {
            let Some(nr) = arch.number(rule.syscall) else {
                continue;
            };
            let block = match rule.action {
                Action::KillProcess => "KILL_PROCESS {".to_string(),
                Action::Errno(e) => format!("ERRNO({e}) {{"),
            };
            let start = policy
                .find(&block)
                .unwrap_or_else(|| panic!("no {block} in {policy}"));
            let body = &policy[start..start + policy[start..].find("\n}").unwrap()];
            assert!(
                body.contains(&format!("SYSCALL[{nr}]"))
                    && body.contains(&format!("/* {} */", rule.syscall)),
                "{} ({nr}) is not in {block}: {policy}",
                rule.syscall
            );
        }
        assert!(
            policy.contains("(arg0 & 0x7e020000) != 0 } /* clone */"),
            "{policy}"
        );
        assert!(policy.contains("/* personality */"), "{policy}");
        assert!(policy.trim_end().ends_with("DEFAULT ALLOW"));
    }
}
