//! Runs model-written Python in a child process: its own temporary folder, an empty
//! environment, a process group of its own that is killed when the program ends or overruns
//! its wall-clock limit, and no network where `unshare` can give it an empty network
//! namespace. Python's `socket` functions are also replaced by ones that raise, which stops
//! ordinary code but not a program set on getting out (`_socket`, a subprocess): without
//! `unshare` that guard is all there is, which is why HumanEval needs
//! `--allow-code-execution`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{EvalError, Result};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed { reason: String },
    TimedOut,
}

/// Put before the program: no sockets, whatever namespace it runs in.
const GUARD: &str = "\
import socket as _bora_socket
def _bora_no_network(*args, **kwargs):
    raise OSError('network access is disabled in this sandbox')
for _bora_name in ('socket', 'create_connection', 'create_server', 'socketpair', 'fromfd', 'getaddrinfo'):
    setattr(_bora_socket, _bora_name, _bora_no_network)
del _bora_name
";

/// Whether `unshare -rn` can give a child its own empty network namespace here.
fn can_unshare() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["-rn", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `program` with `python` (e.g. "python3"); passes when it exits 0 within `timeout`.
pub fn run_python(python: &str, program: &str, timeout: Duration) -> Result<Outcome> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("bora-sandbox-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, e))?;
    let file = dir.join("program.py");
    std::fs::write(&file, format!("{GUARD}\n{program}")).map_err(|e| EvalError::io(&file, e))?;
    let mut cmd = if can_unshare() {
        let mut c = Command::new("unshare");
        c.args(["-rn", python]);
        c
    } else {
        Command::new(python)
    };
    // stderr goes to a file: a pipe could fill and stall the child, or be held open by a
    // grandchild after it exits.
    let err_path = dir.join("stderr.txt");
    let err_file = std::fs::File::create(&err_path).map_err(|e| EvalError::io(&err_path, e))?;
    cmd.args(["-I", "program.py"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| EvalError::Invalid(format!("cannot start {python} to run the tests: {e}")))?;
    let start = Instant::now();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Outcome::Passed,
            Ok(Some(status)) => {
                let err = std::fs::read(&err_path).unwrap_or_default();
                let err = String::from_utf8_lossy(&err);
                let last = err.lines().last().unwrap_or("").to_string();
                break Outcome::Failed {
                    reason: if last.is_empty() {
                        format!("exited with {status}")
                    } else {
                        last
                    },
                };
            }
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(child.id());
                child.kill().ok();
                child.wait().ok();
                break Outcome::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                break Outcome::Failed {
                    reason: format!("cannot wait for the test process: {e}"),
                }
            }
        }
    };
    // Whatever the program started dies with it.
    kill_group(child.id());
    std::fs::remove_dir_all(&dir).ok();
    Ok(outcome)
}

/// Kills the child's process group, so what it spawned goes too.
fn kill_group(pid: u32) {
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
        .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> Outcome {
        run_python("python3", src, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn passing_failing_hanging_and_networking_programs() {
        assert_eq!(run("assert sum([1, 2]) == 3"), Outcome::Passed);
        match run("assert 1 == 2, 'wrong'") {
            Outcome::Failed { reason } => assert!(reason.contains("AssertionError"), "{reason}"),
            o => panic!("{o:?}"),
        }
        let t = Instant::now();
        let o = run_python("python3", "while True: pass", Duration::from_millis(500)).unwrap();
        assert_eq!(o, Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(4));
        match run("import socket\nsocket.create_connection(('127.0.0.1', 9))") {
            Outcome::Failed { reason } => assert!(reason.contains("disabled"), "{reason}"),
            o => panic!("{o:?}"),
        }
        // A grandchild holding stderr open, and a flood of stderr, end in time.
        let t = Instant::now();
        let o = run("import subprocess, sys\nsubprocess.Popen(['sleep', '30'])\nsys.stderr.write('x' * 200000)\nsys.exit(1)");
        assert!(matches!(o, Outcome::Failed { .. }), "{o:?}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "took {:?}",
            t.elapsed()
        );
    }
}
