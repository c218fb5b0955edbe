//! What the crash tests share: the produce entries they append, and a child
//! process that runs one test of the same test binary, to be killed with
//! SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use raftmq_storage::TypeConfig;
use raftmq_types::{NewMessage, QueueCommand, QueueRequest, RaftRequest, TimestampMs};

pub type Entry = openraft::alias::EntryOf<TypeConfig>;

/// Entry `index` of term 1: a produce of one message of `body_bytes` bytes
/// that depend on the index, so a wrong entry read back is noticed.
pub fn produce_entry(index: u64, body_bytes: usize) -> Entry {
    let body = vec![(index % 251) as u8; body_bytes];
    let command = QueueCommand::Produce {
        messages: vec![NewMessage { body: body.into(), ..Default::default() }],
        dedup_window_ms: 0,
        limits: Default::default(),
    };
    Entry::new(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        EntryPayload::Normal(RaftRequest::Queue(QueueRequest { now: TimestampMs(index), command })),
    )
}

/// A child process running the test `test_name` of this binary with `env`
/// set (the test tells from the environment that it is the child). Every
/// line it prints arrives on `lines` ([`ChildTest::next_line`] while it
/// runs); its stderr is kept apart, for the panic of a child that exits
/// before it is killed. Killed with SIGKILL when dropped, so a failing
/// parent leaves no child behind.
pub struct ChildTest {
    process: std::process::Child,
    pub lines: mpsc::Receiver<String>,
    /// The lines `next_line` has returned.
    printed: Vec<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildTest {
    pub fn spawn(test_name: &str, env: &[(&str, &std::ffi::OsStr)]) -> ChildTest {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut process = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the child");
        let stdout = process.stdout.take().unwrap();
        let mut stderr = process.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        ChildTest { process, lines, printed: Vec::new(), reader: Some(reader), stderr: Some(stderr) }
    }

    /// The next line the child prints within `timeout`, `None` if it
    /// printed none. Fails the test if the child exited instead (a failed
    /// assertion of its own, say), with what it printed and its stderr.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.printed.push(line.clone());
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.process.wait();
                let stderr = self.stderr.take().and_then(|reader| reader.join().ok()).unwrap_or_default();
                panic!(
                    "the child exited before it was killed; it printed:\n{}\nand on stderr:\n{stderr}",
                    self.printed.join("\n")
                )
            }
        }
    }

    /// SIGKILL, then waits for the process and for the last of its output,
    /// which stays readable on `lines`. Dropping does the same.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        self.kill();
    }
}
