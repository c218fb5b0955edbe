//! Running a program to completion with a timeout: the `raftmq` CLI, a server
//! that must refuse its config, the Python examples.

use std::fmt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::cluster::raftmq_binary;

/// What a finished program printed, and how it ended.
pub struct CommandOutput {
    /// The command line, for failure messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// The JSON of the `BENCH {json}` line that `raftmq bench` and
    /// `raftmq bench-idle` print; panics without one.
    pub fn bench_summary(&self) -> serde_json::Value {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH "))
            .unwrap_or_else(|| panic!("no BENCH summary line: {self}"));
        println!("{line}");
        serde_json::from_str(line).expect("BENCH line is JSON")
    }

    /// Panics, with everything the program printed, unless it exited 0.
    pub fn assert_success(&self) -> &CommandOutput {
        assert!(self.status.success(), "expected success, got {self}");
        self
    }
}

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// `raftmq ARGS…` without the caller's `RAFTMQ_*` environment, which would
/// otherwise configure it (the test runner sets `RAFTMQ_BIN` and friends).
pub fn raftmq_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(raftmq_binary());
    command.args(args);
    remove_raftmq_env(&mut command);
    command
}

/// `raftmq ARGS… --endpoints ENDPOINTS`, a client command against a running
/// cluster, with `stdin` as its input; at most 60 s.
pub async fn raftmq_cli(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> CommandOutput {
    let mut args = args.to_vec();
    args.extend(["--endpoints", endpoints]);
    run_with_timeout(raftmq_command(&args), stdin, Duration::from_secs(60)).await
}

/// Runs `examples/python/<script> --endpoint <endpoint>` from the repository
/// root with the venv's Python (`RAFTMQ_PYTHON`, set by `scripts/test`), for
/// at most `timeout`.
pub async fn run_python_example(script: &str, endpoint: &str, timeout: Duration) -> CommandOutput {
    let python = std::env::var_os("RAFTMQ_PYTHON").expect(
        "RAFTMQ_PYTHON is not set: run scripts/test, which creates a venv with \
         examples/python/requirements.txt and points RAFTMQ_PYTHON at its python",
    );
    let mut command = Command::new(python);
    command
        .arg(format!("examples/python/{script}"))
        .arg("--endpoint")
        .arg(endpoint)
        .current_dir(crate::cluster::repo_root());
    let output = run_with_timeout(command, None, timeout).await;
    println!("{}", output.stdout);
    output
}

pub(crate) fn remove_raftmq_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RAFTMQ_") {
            command.env_remove(key);
        }
    }
}

/// Runs `command` with `stdin` as its input, waits at most `timeout` for it
/// to exit and returns its output. Panics (after killing it) on timeout.
pub async fn run_with_timeout(command: Command, stdin: Option<&[u8]>, timeout: Duration) -> CommandOutput {
    let description = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|e| panic!("start {description}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was configured as a pipe");
        let input = input.to_vec();
        // Written from a task so a program that prints before reading all its
        // input cannot deadlock against us.
        tokio::spawn(async move {
            // A program may exit without reading everything; that is its answer.
            let _ = pipe.write_all(&input).await;
        });
    }
    // On timeout the child is dropped with the future and killed.
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("wait for {description}: {e}")),
        Err(_) => panic!("{description} did not exit within {timeout:?}"),
    };
    CommandOutput {
        command: description,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
