//! How client commands print: human tables by default, `--output json` for scripts, and server
//! errors turned into one line a person can act on.

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON (the wire messages, field names as in the proto) for scripts.
    Json,
}

/// Prints `value` as JSON, or `table()` for people.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => {
            let t = table();
            if t.row_count() > 0 || t.header().is_some() {
                println!("{t}");
            }
        }
    }
    Ok(())
}

/// A table with `headers`, no borders (like `ps` or `kubectl get`).
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    t
}

/// Key/value lines for one object.
pub fn details(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    t
}

/// A message for people, or `{"ok": true, …}` in JSON.
pub fn done(format: Format, message: &str, json: serde_json::Value) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Format::Table => println!("{message}"),
    }
    Ok(())
}

pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// A gRPC error as one line a person can act on.
pub fn describe_status(s: &tonic::Status) -> String {
    use tonic::Code;
    let message = s.message().replace(['\n', '\r'], " ");
    let message = message.trim();
    match s.code() {
        Code::Unauthenticated => format!(
            "the server refused the credentials ({message}): run `taskqueue login` or pass --token"
        ),
        Code::PermissionDenied => format!("permission denied: {message}"),
        Code::Unavailable => format!("cannot reach the server: {message}"),
        Code::DeadlineExceeded => format!("the server did not answer in time: {message}"),
        Code::NotFound => format!("not found: {message}"),
        Code::InvalidArgument => format!("invalid request: {message}"),
        Code::AlreadyExists => format!("already exists: {message}"),
        Code::Unimplemented => format!("the server does not support this yet: {message}"),
        code => format!("{message} ({code:?})"),
    }
}

/// Unwraps an RPC answer, turning a Status into a readable error.
pub fn rpc<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!(describe_status(&s)))
}

/// Parses `key=value`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let s = tonic::Status::unauthenticated("invalid session\nid");
        let line = describe_status(&s);
        assert!(!line.contains('\n'));
        assert!(line.contains("taskqueue login"), "{line}");
        let s = tonic::Status::internal("boom");
        assert_eq!(describe_status(&s), "boom (Internal)");
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }
}
