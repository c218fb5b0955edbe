//! What a node's RocksDB says about itself in its database directory: the
//! options it was opened with (the newest `OPTIONS-*` file, written at every
//! open) and the events of its info log (`LOG`).

use std::collections::BTreeMap;
use std::path::Path;

/// The memtable sizes a database was opened with, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemtableSizes {
    /// `db_write_buffer_size`: all column families together.
    pub budget: u64,
    /// `write_buffer_size` of each column family, by name.
    pub per_column_family: BTreeMap<String, u64>,
}

/// Reads the newest `OPTIONS-*` file in `db_dir`; `None` until RocksDB has
/// written one (it does so when it opens the database).
pub fn memtable_sizes(db_dir: &Path) -> Option<MemtableSizes> {
    let newest = std::fs::read_dir(db_dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((name.strip_prefix("OPTIONS-")?.parse::<u64>().ok()?, name)))
        .max()?
        .1;
    let text = std::fs::read_to_string(db_dir.join(newest)).ok()?;
    let value = |section: &str, name: &str| -> Option<u64> {
        let prefix = format!("{name}=");
        section.lines().find_map(|l| l.trim().strip_prefix(prefix.as_str()))?.parse().ok()
    };
    let budget = value(text.split("[DBOptions]").nth(1)?, "db_write_buffer_size")?;
    let per_column_family = text
        .split("[CFOptions \"")
        .skip(1)
        .filter_map(|section| {
            let (name, rest) = section.split_once("\"]")?;
            Some((name.to_string(), value(rest, "write_buffer_size")?))
        })
        .collect();
    Some(MemtableSizes { budget, per_column_family })
}

/// How many times the info log (`LOG`) in `db_dir` records the event
/// `event` (RocksDB's `"event": "…"` lines, e.g. `blob_file_creation`).
pub fn log_events(db_dir: &Path, event: &str) -> usize {
    let text = std::fs::read_to_string(db_dir.join("LOG")).unwrap_or_default();
    let needle = format!("\"event\": \"{event}\"");
    text.lines().filter(|line| line.contains(&needle)).count()
}
