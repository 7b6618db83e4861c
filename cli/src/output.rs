//! kubectl-like output: aligned columns for people, JSON for scripts.

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

/// The output format (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// A JSON document.
    Json,
}

/// Writes `bytes` to standard output. A closed pipe (`kubesign ... | head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints `rows` as a table with `headers`, or as JSON (`json` is the document to print).
pub fn print<T: Serialize>(
    format: Format,
    headers: &[&str],
    rows: &[Vec<String>],
    json: &T,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, json)?;
            writeln!(out)?;
        }
        Format::Table => {
            let mut tw = tabwriter::TabWriter::new(&mut out).padding(3);
            writeln!(tw, "{}", headers.join("\t"))?;
            for row in rows {
                writeln!(tw, "{}", row.join("\t"))?;
            }
            tw.flush()?;
        }
    }
    write_stdout(&out)
}
