//! `deploy/startup.sh`: it parses, passes shellcheck (where installed), and does what it says
//! when run against fakes: `curl` (the metadata server), `iptables`/`ip6tables`, `docker` and
//! `systemctl` are scripts that log their arguments, on a PATH that holds nothing else but a
//! few harmless tools, so the test can never touch this host's firewall or power it off.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use warmpool_testkit::wait::settled_blocking;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/startup.sh")
}

#[test]
fn startup_script_parses_and_passes_shellcheck() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .expect("run bash -n");
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match Command::new("shellcheck").arg("--version").output() {
        Ok(v) if v.status.success() => {
            let out = Command::new("shellcheck")
                .arg(script())
                .output()
                .expect("run shellcheck");
            assert!(
                out.status.success(),
                "shellcheck:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        _ => eprintln!(
            "SKIPPED: shellcheck is not installed here (apt-get install -y shellcheck); only bash -n ran"
        ),
    }
}

/// A directory of fakes and the few real tools the script needs.
struct FakeHost {
    dir: tempfile::TempDir,
}

impl FakeHost {
    /// `docker run` exits with each of `statuses` in turn.
    fn new(statuses: &[i32]) -> FakeHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        for tool in [
            "sed", "head", "tail", "tr", "getent", "sort", "seq", "sleep", "mkdir", "cp", "sync",
        ] {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} not found"));
            std::os::unix::fs::symlink(real, bin.join(tool)).expect("symlink");
        }
        let log = dir.path().join("calls.log");
        let statuses_file = dir.path().join("statuses");
        let lines: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
        std::fs::write(&statuses_file, lines.join("\n") + "\n").expect("statuses");
        let fake = |name: &str, body: &str| {
            let path = bin.join(name);
            let text = format!(
                "#!/bin/bash\necho \"{name} $*\" >> '{}'\n{body}\n",
                log.display()
            );
            std::fs::write(&path, text).expect("write fake");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        // The metadata server: the image, and an agent-env that moves the sandbox uids.
        fake(
            "curl",
            r#"url="${*: -1}"
case "$url" in
  */instance/attributes/warmpool-agent-image) echo "example.org/warmpool-agent:test" ;;
  */instance/attributes/warmpool-agent-env) printf 'WARMPOOL_AGENT_SLOTS=2\nWARMPOOL_SANDBOX_UID_BASE=61000\n' ;;
  *) exit 22 ;;
esac"#,
        );
        let rules = r#"for a in "$@"; do [ "$a" = -C ] && exit 1; done; exit 0"#;
        fake("iptables", rules);
        fake("ip6tables", rules);
        fake(
            "docker",
            &format!(
                r#"statuses='{}'
if [ "$1" = run ]; then
  status=$(head -n 1 "$statuses"); sed -i 1d "$statuses"; exit "${{status:-99}}"
fi
exit 0"#,
                statuses_file.display()
            ),
        );
        fake("systemctl", "exit 0");
        FakeHost { dir }
    }

    /// Runs the startup script to its end (it ends by "powering off").
    fn run(&self) -> (i32, Vec<String>) {
        let mut child = Command::new("/bin/bash")
            .arg(script())
            .env_clear()
            .env("PATH", self.dir.path().join("bin"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run startup.sh");
        let status = settled_blocking(
            Duration::from_secs(60),
            || child.try_wait().expect("wait"),
            Option::is_some,
        );
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("startup.sh did not end within 60 s");
        };
        let out = child.wait_with_output().expect("output");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        let calls = std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default();
        (
            status.code().unwrap_or(-1),
            calls.lines().map(str::to_string).collect(),
        )
    }
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call starting with {prefix:?} in {calls:#?}"))
}

#[test]
fn startup_script_installs_the_backstop_then_powers_off_when_the_agent_asks() {
    for status in [3, 4] {
        let host = FakeHost::new(&[status]);
        let (code, calls) = host.run();
        assert_eq!(code, 0, "{calls:#?}");

        let v4 = position(
            &calls,
            "iptables -w -I OUTPUT 1 -d 169.254.169.254 -m owner --uid-owner 61000-61063 -j REJECT",
        );
        let v6 = position(
            &calls,
            "ip6tables -w -I OUTPUT 1 -d fd20:ce::254 -m owner --uid-owner 61000-61063 -j REJECT",
        );
        let run = position(&calls, "docker run");
        assert!(v4 < run && v6 < run, "the backstop comes first: {calls:#?}");
        let args = &calls[run];
        for expected in [
            "--privileged",
            "--cgroupns=private",
            "--network host",
            "example.org/warmpool-agent:test --from-metadata",
        ] {
            assert!(args.contains(expected), "{expected:?} in {args}");
        }
        assert!(
            position(&calls, "systemctl poweroff") > run,
            "status {status} powers the VM off: {calls:#?}"
        );
    }
}

#[test]
fn startup_script_restarts_a_failed_agent() {
    let host = FakeHost::new(&[1, 3]);
    let (code, calls) = host.run();
    assert_eq!(code, 0);
    let runs = calls.iter().filter(|c| c.starts_with("docker run")).count();
    assert_eq!(runs, 2, "{calls:#?}");
    position(&calls, "systemctl poweroff");
}
