//! The unsandboxed development backend: the program runs as a bare process in a fresh
//! temporary directory. It gets the same rlimits, deadline and output caps as under bwrap, and
//! no isolation whatsoever: it sees the host's files, processes and network.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use warmpool_core::model::FileSpec;

use super::error::SandboxError;
use super::host;
use super::launch::{Held, Launch, Launcher, Plan, Run, Spare};
use super::preexec::Setup;
use super::supervise::Tree;

/// The process backend: no sandbox, a bare process in its own directory.
pub(super) struct Process;

impl Launcher for Process {
    fn cold(&self, plan: &Plan<'_>, run: &Run) -> Result<Launch, SandboxError> {
        // Dropping to the slot uid needs root. A developer running the agent as themselves
        // keeps their uid, and then RLIMIT_NPROC would count all their own processes, so it is
        // left out.
        // SAFETY: geteuid cannot fail.
        let credentials = (unsafe { libc::geteuid() } == 0).then_some(run.uid);
        let rlimits = if credentials.is_some() {
            run.rlimits
        } else {
            run.rlimits.without_nproc()
        };
        let dir = WorkDir::create(plan.files, credentials)?;
        let command = dir.command(&plan.argv);
        Ok(Launch {
            command,
            setup: Setup::new(credentials, rlimits, Vec::new()),
            tree: Tree::Bare,
            // Removed once the run is over.
            held: Box::new(dir),
        })
    }

    fn spare(&self, _: &Spare) -> Result<Launch, SandboxError> {
        Err(SandboxError::Config(
            "the process backend has no sandbox to keep warm".into(),
        ))
    }

    fn isolates(&self) -> bool {
        false
    }

    /// Never probed: it isolates nothing.
    fn check_probe(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A fresh directory holding one execution's files, removed on drop.
pub(super) struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates the directory (0700, owned by `owner` if given) and the job's files in it.
    /// `O_EXCL | O_NOFOLLOW`: a file never lands anywhere but as a new entry of this directory.
    pub fn create(files: &[FileSpec], owner: Option<u32>) -> Result<Self, SandboxError> {
        let prepare = |context| move |source| SandboxError::Prepare { context, source };
        let dir = Self::make_unique_dir().map_err(prepare("creating the work directory"))?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(&dir.path, Some(id), Some(id))
                .map_err(prepare("handing the work directory to the slot uid"))?;
        }
        for spec in files {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dir.path.join(&spec.name))
                .map_err(prepare("creating a job file"))?;
            file.write_all(spec.content.as_bytes())
                .map_err(prepare("writing a job file"))?;
            if let Some(id) = owner {
                std::os::unix::fs::fchown(&file, Some(id), Some(id))
                    .map_err(prepare("handing a job file to the slot uid"))?;
            }
        }
        Ok(dir)
    }

    fn make_unique_dir() -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last_error = io::Error::other("no attempt made");
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("warmpool-{}-{n}-{nanos:x}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// `argv` run in this directory with the sandboxes' allow-listed environment (`host::ENV`),
    /// this directory standing in for their `/work` and `/tmp`.
    pub fn command(&self, argv: &[String]) -> Command {
        let (program, args) = argv
            .split_first()
            .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(&self.path)
            .env_clear()
            .envs(host::ENV.iter().copied())
            .env("HOME", &self.path)
            .env("TMPDIR", &self.path);
        command
    }
}

impl Held for WorkDir {}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a work directory");
        }
    }
}
