//! The history of a fault run: every operation as invoked, then as completed
//! (`ok`, `fail` or `info`), and every fault the nemesis injected, one JSON
//! object per line, in the order they happened.
//!
//! The history is the only input of the checker, so a run can be checked
//! again later (`raftmq-fault check history.jsonl`) and a fabricated history
//! can test the checker itself.
//!
//! Completion types follow Jepsen: `ok` took effect, `fail` certainly did not,
//! `info` is unknown (a timeout, a connection broken under the call, a leader
//! lost mid-request). Each process runs one operation at a time, so the
//! completion of an invocation is the next event of the same process.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Produce,
    Consume,
    Ack,
    /// The nemesis started a fault (`fault` names it, `nodes` its targets).
    Fault,
    /// The nemesis ended a fault: restarted, resumed or reconnected.
    Recover,
}

/// One message in an operation: produced (id, then offset once ok), delivered
/// (id, offset, attempt, receipt) or acked (id, offset, receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// The message body: `p<producer>-<sequence>`, unique in a run.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

impl Msg {
    pub fn id(id: impl Into<String>) -> Msg {
        Msg { id: id.into(), offset: None, attempt: None, receipt: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    #[serde(default)]
    pub index: u64,
    /// Microseconds since the run started.
    #[serde(default)]
    pub time_us: u64,
    /// `producer-N`, `consumer-N`, `drain-N` or `nemesis`.
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Type,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The node the call went to, for operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Msg>,
    /// Ack completions: receipts the server refused, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Fault events: the kind of fault (`kill-leader`, `pause`, `isolate`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Fault events: the nodes it hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<u64>,
}

impl Event {
    pub fn new(process: impl Into<String>, kind: Type, f: F) -> Event {
        Event {
            index: 0,
            time_us: 0,
            process: process.into(),
            kind,
            f,
            queue: None,
            node: None,
            messages: Vec::new(),
            failed: Vec::new(),
            error: None,
            fault: None,
            nodes: Vec::new(),
        }
    }

    pub fn queue(mut self, queue: &str) -> Event {
        self.queue = Some(queue.to_string());
        self
    }

    pub fn node(mut self, node: u64) -> Event {
        self.node = Some(node);
        self
    }

    pub fn messages(mut self, messages: Vec<Msg>) -> Event {
        self.messages = messages;
        self
    }

    pub fn error(mut self, error: impl Into<String>) -> Event {
        self.error = Some(error.into());
        self
    }

    pub fn fault(mut self, fault: &str, nodes: Vec<u64>) -> Event {
        self.fault = Some(fault.to_string());
        self.nodes = nodes;
        self
    }
}

struct Writer {
    out: BufWriter<File>,
    next_index: u64,
}

/// Appends events to a JSON-lines file. Cheap to clone; every clone writes to
/// the same file, and the index and time are assigned under one lock, so the
/// file order is the order of `record` calls.
#[derive(Clone)]
pub struct History {
    started: Instant,
    writer: Arc<Mutex<Writer>>,
}

impl History {
    pub fn create(path: &Path) -> std::io::Result<History> {
        let file = File::create(path)?;
        Ok(History {
            started: Instant::now(),
            writer: Arc::new(Mutex::new(Writer { out: BufWriter::new(file), next_index: 0 })),
        })
    }

    /// When the run started: times in the history count from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn record(&self, mut event: Event) {
        let mut writer = self.writer.lock().expect("history lock poisoned");
        event.index = writer.next_index;
        event.time_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        writer.next_index += 1;
        let line = serde_json::to_string(&event).expect("events serialize");
        // A history that cannot be written makes the run worthless: stop.
        writeln!(writer.out, "{line}").expect("write the history file");
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.writer.lock().expect("history lock poisoned").out.flush()
    }
}

/// Reads a history written by [`History`]. Line numbers in errors are 1-based.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a history event: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}
