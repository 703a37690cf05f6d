//! The bubblewrap command line, and how to kill a bwrap sandbox so that nothing is left behind.
//!
//! # Process tree
//! ```text
//! agent ── reaper shim (uid = slot, our child, process-group leader, child subreaper)
//!            └── bwrap (same process group)
//!                  └── bwrap init (pid 1 of the new pid namespace, same process group)
//!                        └── the program (its own session: --new-session)
//! ```
//! bwrap exits with the program's status once the program exits; the init's exit tears the pid
//! namespace down, killing every process left in it (daemons included). The shim (see
//! `preexec::shim`) reaps bwrap and its init and reports their resource usage; `supervise`
//! kills such a tree.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;

use warmpool_core::model::FileSpec;

use super::error::SandboxError;
use super::host::{self, MemFile, RootEntry, ENV, READ_ONLY, WORK_DIR};
use super::launch::{Held, Launch, Launcher, Plan, Run, Spare};
use super::preexec::Setup;
use super::probe;
use super::seccomp;
use super::supervise::Tree;

/// Where a warm sandbox sees the agent binary that serves as its stub (see `warm`), read-only.
pub(super) const STUB_PATH: &str = "/.warmpool-stub";

/// bwrap and what it needs to know about this host, found once at start-up and shared (behind
/// the sandbox's `Launcher`) with the warm pool's preparer (see `warm`).
#[derive(Debug)]
pub(super) struct Bwrap {
    program: PathBuf,
    /// How each of `host::ROOT_LINKS` that exists on the host appears in the sandbox.
    root: Vec<RootEntry>,
    /// The compiled seccomp filter (see `seccomp`), handed to each sandbox through a fresh
    /// memfd; `None` when seccomp is off.
    seccomp: Option<Vec<u8>>,
}

/// What one sandbox reads from inherited fds: the job's files and the seccomp filter. Kept
/// open until the child has read them (bwrap copies them before the program starts).
pub(super) struct Inputs {
    files: Vec<MemFile>,
    /// A fresh memfd per sandbox, never one shared: bwrap reads it from the current offset to
    /// the end, and concurrent sandboxes would share that offset.
    seccomp: Option<OwnedFd>,
}

impl Inputs {
    /// The fds the child must inherit; every other is closed on exec (see `preexec::Setup`).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.files
            .iter()
            .map(MemFile::raw_fd)
            .chain(self.seccomp.as_ref().map(AsRawFd::as_raw_fd))
            .collect()
    }
}

impl Bwrap {
    /// Finds bwrap on PATH and reads the host's root layout; with `seccomp`, compiles the
    /// filter for this architecture (an error on one that has no syscall table).
    pub fn locate(seccomp: bool) -> Result<Self, SandboxError> {
        let program = host::find_program("bwrap").ok_or(SandboxError::BwrapMissing)?;
        let root = host::root_layout();
        let seccomp = match (seccomp, seccomp::bpf::native_program()) {
            (false, _) => None,
            (true, Some(program)) => Some(program.to_bytes()),
            (true, None) => {
                return Err(SandboxError::Config(format!(
                    "the seccomp filter has no syscall table for {}: set \
                     WARMPOOL_SANDBOX_SECCOMP=off to run without it",
                    std::env::consts::ARCH
                )))
            }
        };
        let bwrap = Self {
            program,
            root,
            seccomp,
        };
        tracing::debug!(?bwrap, "found bubblewrap");
        Ok(bwrap)
    }

    /// Whether each sandbox loads the seccomp filter.
    pub fn seccomp(&self) -> bool {
        self.seccomp.is_some()
    }

    /// The fds one sandbox reads: `files` in memfds, and the seccomp filter in another.
    pub fn inputs(&self, files: &[FileSpec]) -> Result<Inputs, SandboxError> {
        let seccomp = self
            .seccomp
            .as_deref()
            .map(|program| host::memfd(c"warmpool-seccomp", program))
            .transpose()
            .map_err(|source| SandboxError::Prepare {
                context: "writing the seccomp filter to a memfd",
                source,
            })?;
        Ok(Inputs {
            files: host::memfds(files)?,
            seccomp,
        })
    }

    /// The command that runs `argv` in a fresh sandbox holding `inputs`' files in `/work`,
    /// under its seccomp filter.
    pub fn command(&self, argv: &[String], inputs: &Inputs, work_dir_mb: u64) -> Command {
        let mut command = Command::new(&self.program);
        // bwrap itself gets no environment either: the agent's may hold secrets.
        command
            .env_clear()
            .current_dir("/")
            .args(self.args(argv, inputs, work_dir_mb, None));
        command
    }

    /// The command of a warm sandbox (see `warm`): the same sandbox, with the spare's stub (an
    /// fd on the agent binary) bound read-only at [`STUB_PATH`] and run there in place of a
    /// program, reading its job from the inherited job pipe. `inputs` holds no files: the stub
    /// writes them.
    fn stub_command(&self, spare: &Spare, inputs: &Inputs) -> Command {
        let [subcommand, job_fd] = spare.stub_args();
        let argv = [STUB_PATH.to_string(), subcommand, job_fd];
        let mut command = Command::new(&self.program);
        command.env_clear().current_dir("/").args(self.args(
            &argv,
            inputs,
            spare.work_dir_mb,
            Some(spare.stub),
        ));
        command
    }

    fn args(
        &self,
        argv: &[String],
        inputs: &Inputs,
        work_dir_mb: u64,
        stub: Option<RawFd>,
    ) -> Vec<OsString> {
        let files = &inputs.files;
        let size = work_dir_mb.saturating_mul(1024 * 1024).to_string();
        let mut args: Vec<OsString> = Vec::with_capacity(64 + 4 * files.len() + argv.len());
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        // Every namespace; --unshare-user explicitly because --disable-userns requires it.
        push(&["--unshare-all", "--unshare-user", "--disable-userns"]);
        push(&["--die-with-parent", "--new-session", "--cap-drop", "ALL"]);
        push(&["--hostname", "sandbox"]);
        for dir in READ_ONLY {
            // An optional path absent on this host is skipped by bwrap itself.
            let bind = if dir.required {
                "--ro-bind"
            } else {
                "--ro-bind-try"
            };
            push(&[bind, dir.path, dir.path]);
        }
        push(&["--proc", "/proc", "--dev", "/dev"]);
        push(&["--size", &size, "--tmpfs", "/tmp"]);
        push(&["--size", &size, "--tmpfs", WORK_DIR, "--chdir", WORK_DIR]);
        push(&["--clearenv"]);
        for (name, value) in ENV {
            push(&["--setenv", name, value]);
        }
        for entry in &self.root {
            match entry {
                RootEntry::Symlink { path, target } => {
                    args.push("--symlink".into());
                    args.push(target.clone());
                    args.push(path.into());
                }
                RootEntry::Bind(path) => {
                    args.extend(["--ro-bind", path, path].map(OsString::from));
                }
            }
        }
        if let Some(stub) = stub {
            args.push("--ro-bind-fd".into());
            args.push(stub.to_string().into());
            args.push(STUB_PATH.into());
        }
        for file in files {
            args.extend(["--perms", "0644", "--file"].map(OsString::from));
            args.push(file.raw_fd().to_string().into());
            args.push(format!("{WORK_DIR}/{}", file.name).into());
        }
        // Applied by bwrap after its own setup, to its init and to the program before exec.
        if let Some(fd) = &inputs.seccomp {
            args.push("--seccomp".into());
            args.push(fd.as_raw_fd().to_string().into());
        }
        args.push("--".into());
        args.extend(argv.iter().map(OsString::from));
        args
    }
}

impl Launcher for Bwrap {
    fn cold(&self, plan: &Plan<'_>, run: &Run) -> Result<Launch, SandboxError> {
        // Kept open until the child has read them (bwrap copies them before the program
        // starts), then closed with the run.
        let inputs = self.inputs(plan.files)?;
        let command = self.command(&plan.argv, &inputs, run.work_dir_mb);
        let setup = Setup::new(Some(run.uid), run.rlimits, inputs.raw_fds());
        Ok(Launch {
            command,
            setup,
            tree: Tree::Shimmed,
            held: Box::new(inputs),
        })
    }

    fn spare(&self, spare: &Spare) -> Result<Launch, SandboxError> {
        let inputs = self.inputs(&[])?;
        let command = self.stub_command(spare, &inputs);
        let mut inherit = inputs.raw_fds();
        inherit.extend([spare.stub, spare.job_fd]);
        let setup = Setup::new(Some(spare.uid), spare.rlimits, inherit);
        Ok(Launch {
            command,
            setup,
            tree: Tree::Shimmed,
            held: Box::new(inputs),
        })
    }

    fn isolates(&self) -> bool {
        true
    }

    fn check_probe(&self, probe_stdout: &str) -> Result<(), String> {
        // The filter is in force (mode 2) under no_new_privs, as the program will run.
        match self.seccomp() {
            true => probe::check_seccomp_and_no_new_privs(probe_stdout, true),
            false => Ok(()),
        }
    }
}

/// The memfds bwrap reads at its start; closed when the run is over.
impl Held for Inputs {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn bwrap() -> Bwrap {
        Bwrap {
            program: "/usr/bin/bwrap".into(),
            root: vec![
                RootEntry::Symlink {
                    path: "/bin",
                    target: "usr/bin".into(),
                },
                RootEntry::Bind("/lib64"),
            ],
            seccomp: seccomp::bpf::native_program().map(|p| p.to_bytes()),
        }
    }

    fn no_inputs() -> Inputs {
        Inputs {
            files: Vec::new(),
            seccomp: None,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_sandbox_has_every_namespace_and_no_way_to_share_one() {
        let args = joined(&bwrap().args(&["/bin/true".into()], &no_inputs(), 64, None));
        for wanted in [
            "--unshare-all",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop ALL",
            "--clearenv",
            "--size 67108864 --tmpfs /work --chdir /work",
            "--size 67108864 --tmpfs /tmp",
            "--symlink usr/bin /bin",
            "--ro-bind /lib64 /lib64",
            "--setenv HOME /work",
        ] {
            assert!(args.contains(wanted), "missing {wanted:?} in {args}");
        }
        for forbidden in ["--share-net", "--bind ", "--dev-bind", "--cap-add"] {
            assert!(!args.contains(forbidden), "{forbidden:?} in {args}");
        }
    }

    #[test]
    fn the_command_comes_last_after_a_double_dash_so_it_is_never_an_option() {
        let argv = ["/usr/bin/python3".to_string(), "--version".to_string()];
        let args = bwrap().args(&argv, &no_inputs(), 1, None);
        let n = args.len();
        assert_eq!(args[n - 3], "--");
        assert_eq!(args[n - 2], "/usr/bin/python3");
        assert_eq!(args[n - 1], "--version");
    }

    #[test]
    fn job_files_and_the_seccomp_filter_are_passed_by_fd() {
        let bwrap = bwrap();
        let inputs = bwrap
            .inputs(&[FileSpec {
                name: "main.py".into(),
                content: "print(1)".into(),
            }])
            .unwrap();
        let fd = inputs.files[0].raw_fd();
        let filter_fd = inputs.seccomp.as_ref().expect("seccomp on").as_raw_fd();
        assert_eq!(inputs.raw_fds(), [fd, filter_fd]);
        let args = joined(&bwrap.args(&["/bin/true".into()], &inputs, 1, None));
        assert!(
            args.contains(&format!("--perms 0644 --file {fd} /work/main.py")),
            "{args}"
        );
        assert!(
            args.contains(&format!("--seccomp {filter_fd} -- /bin/true")),
            "{args}"
        );
        // Close-on-exec in the parent: only the child that needs them clears the flag.
        for fd in inputs.raw_fds() {
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        use std::io::Read;
        let Inputs { files, seccomp } = inputs;
        let mut content = String::new();
        File::from(files.into_iter().next().unwrap().fd)
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(
            content, "print(1)",
            "bwrap reads from the current offset, which must be 0"
        );
        let mut filter = Vec::new();
        File::from(seccomp.unwrap())
            .read_to_end(&mut filter)
            .unwrap();
        assert_eq!(Some(filter), bwrap.seccomp);
    }

    #[test]
    fn without_seccomp_no_filter_is_passed() {
        let bwrap = Bwrap {
            seccomp: None,
            ..bwrap()
        };
        let inputs = bwrap.inputs(&[]).unwrap();
        assert!(inputs.raw_fds().is_empty());
        let args = joined(&bwrap.args(&["/bin/true".into()], &inputs, 1, None));
        assert!(!args.contains("--seccomp"), "{args}");
    }
}
