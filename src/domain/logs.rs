//! Pure rules of task logs: which output a `log_type` names, how received text becomes stored batch
//! bodies (lines, each followed by `\n`), what an ingest buffer holds before it must be flushed, and
//! the line arithmetic of paging backwards (`GetLogsChunk`). No I/O here.

use std::collections::BTreeMap;
use std::ops::Range;

use super::status::TaskStatus;
use super::{Error, Result};

/// Which output of a task a log line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    /// The letter stored in `task_log.stream`.
    pub fn letter(self) -> &'static str {
        match self {
            LogStream::Stdout => "O",
            LogStream::Stderr => "E",
        }
    }

    /// The name the Go worker sends and the follow streams answer with.
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    /// Parses a `log_type`: `O`/`stdout` or `E`/`stderr` (docs/architecture.md#task-logs); anything
    /// else is refused.
    pub fn parse(log_type: &str) -> Result<LogStream> {
        match log_type {
            "O" | "stdout" => Ok(LogStream::Stdout),
            "E" | "stderr" => Ok(LogStream::Stderr),
            other => Err(Error::Invalid(format!(
                "invalid log_type {other:?}: expected \"stdout\", \"stderr\", \"O\" or \"E\""
            ))),
        }
    }

    /// Parses an optional `log_type` filter: absent or empty selects both outputs.
    pub fn parse_filter(log_type: Option<&str>) -> Result<Vec<LogStream>> {
        match log_type {
            None | Some("") => Ok(LogStream::ALL.to_vec()),
            Some(t) => Ok(vec![LogStream::parse(t)?]),
        }
    }
}

/// Which tasks a SendTaskLogs stream may append lines to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAccess {
    /// Any existing task: a caller with a token, or any caller under
    /// `--allow-unauthenticated-log-streams`.
    AnyTask,
    /// Only a task a worker holds at the moment of the write (`TaskStatus::HELD_BY_WORKER`): a
    /// caller without a token. The original Go worker's token interceptor is unary-only, so its
    /// SendTaskLogs streams carry no `authorization` header; this keeps its logs without letting an
    /// anonymous caller touch a task no worker is running.
    HeldTasks,
}

/// Appends `text` to a batch body as lines: every `\n` in the text starts a new line (so line counts
/// match what a reader of the log sees, as with the original's line-per-message files), and each
/// line is stored followed by `\n`. NUL, which Postgres text cannot hold, becomes U+FFFD. Returns
/// the number of lines appended (at least 1: an empty text is one empty line).
pub fn push_lines(body: &mut String, text: &str) -> u32 {
    let mut lines = 0;
    for line in text.split('\n') {
        if line.contains('\0') {
            body.push_str(&line.replace('\0', "\u{FFFD}"));
        } else {
            body.push_str(line);
        }
        body.push('\n');
        lines += 1;
    }
    lines
}

/// The lines of a stored batch body (each stored followed by `\n`).
pub fn body_lines(body: &str) -> impl Iterator<Item = &str> {
    body.strip_suffix('\n')
        .map(|b| b.split('\n'))
        .into_iter()
        .flatten()
}

/// A batch waiting to be stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingBatch {
    pub body: String,
    pub lines: u32,
}

/// The line stored once when a task's log reaches its byte bound; nothing is stored after it.
pub const TRUNCATION_LINE: &str = "[taskqueue] log truncated: this task reached --max-log-bytes-per-task, later lines are dropped";

/// The stored body of the truncation batch (a line is stored followed by a newline).
pub fn truncation_body() -> String {
    format!("{TRUNCATION_LINE}\n")
}

/// A task's log volume when a batch arrives: bytes stored so far (both outputs), whether the
/// truncation line is already stored, and the bound.
#[derive(Debug, Clone, Copy)]
pub struct LogBudget {
    pub stored: u64,
    pub truncated: bool,
    pub max: u64,
}

impl LogBudget {
    /// What of `batches` is stored: every batch while the total stays within `max`; of the batch
    /// that crosses it, the whole lines that fit, then the truncation line (its own batch); nothing
    /// once truncated. Returns the batches to store and how many bytes were dropped.
    pub fn apply(
        &self,
        batches: &[(LogStream, PendingBatch)],
    ) -> (Vec<(LogStream, PendingBatch)>, u64) {
        let total: u64 = batches.iter().map(|(_, b)| b.body.len() as u64).sum();
        if self.truncated {
            return (Vec::new(), total);
        }
        let mut stored = self.stored;
        let mut kept = Vec::with_capacity(batches.len());
        for (stream, batch) in batches {
            let len = batch.body.len() as u64;
            if stored.saturating_add(len) <= self.max {
                stored += len;
                kept.push((*stream, batch.clone()));
                continue;
            }
            let room = usize::try_from(self.max.saturating_sub(stored)).unwrap_or(usize::MAX);
            let mut head = PendingBatch::default();
            for line in batch.body.split_inclusive('\n') {
                if head.body.len() + line.len() > room {
                    break;
                }
                head.body.push_str(line);
                head.lines += 1;
            }
            stored += head.body.len() as u64;
            if head.lines > 0 {
                kept.push((*stream, head));
            }
            kept.push((
                *stream,
                PendingBatch {
                    body: truncation_body(),
                    lines: 1,
                },
            ));
            break;
        }
        let dropped = (self.stored + total).saturating_sub(stored);
        (kept, dropped)
    }
}

/// What a log stream has received and not yet stored, per (task, output). Bounded by the caller:
/// it flushes when `bytes()` reaches its threshold or when the oldest line is old enough.
#[derive(Debug, Default)]
pub struct IngestBuffer {
    pending: BTreeMap<(i32, LogStream), PendingBatch>,
    bytes: usize,
}

impl IngestBuffer {
    /// Adds one received message's text; returns the bytes it added.
    pub fn push(&mut self, task_id: i32, stream: LogStream, text: &str) -> usize {
        let batch = self.pending.entry((task_id, stream)).or_default();
        let before = batch.body.len();
        batch.lines += push_lines(&mut batch.body, text);
        let added = batch.body.len() - before;
        self.bytes += added;
        added
    }

    /// Bytes of body waiting (each line counts its `\n`, so empty lines count too).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many (task, output) pairs have lines waiting.
    pub fn keys(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes everything waiting, grouped by task in ascending task order (so concurrent flushers
    /// take per-task locks in one global order), stdout before stderr.
    pub fn take(&mut self) -> Vec<(i32, Vec<(LogStream, PendingBatch)>)> {
        self.bytes = 0;
        let mut out: Vec<(i32, Vec<(LogStream, PendingBatch)>)> = Vec::new();
        for ((task_id, stream), batch) in std::mem::take(&mut self.pending) {
            match out.last_mut() {
                Some((t, batches)) if *t == task_id => batches.push((stream, batch)),
                _ => out.push((task_id, vec![(stream, batch)])),
            }
        }
        out
    }
}

/// Whether the follow streams of a task end (once everything written before is sent): it succeeded,
/// failed or was canceled, or it was hidden (replaced by a retry clone, read-only from then on).
pub fn follow_ends(status: TaskStatus, hidden: bool) -> bool {
    hidden
        || matches!(
            status,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
}

/// The most task ids one GetLogsChunk may name.
pub const CHUNK_MAX_TASKS: usize = 1000;

/// Checks a GetLogsChunk request; returns (chunk, skip) as line counts. `chunkSize` 0 selects
/// nothing (as the original), a larger one than `GET_LOGS_CHUNK.max` is clamped to it; negative
/// sizes and too many ids are refused.
pub fn chunk_request(
    task_ids: usize,
    chunk_size: i32,
    skip_from_end: Option<i32>,
) -> Result<(i64, i64)> {
    if task_ids > CHUNK_MAX_TASKS {
        return Err(Error::Invalid(format!(
            "at most {CHUNK_MAX_TASKS} task ids per GetLogsChunk (got {task_ids})"
        )));
    }
    if chunk_size < 0 {
        return Err(Error::Invalid(format!(
            "chunkSize must not be negative (got {chunk_size})"
        )));
    }
    let skip = skip_from_end.unwrap_or(0);
    if skip < 0 {
        return Err(Error::Invalid(format!(
            "skipFromEnd must not be negative (got {skip})"
        )));
    }
    let chunk = i64::from(chunk_size).min(super::limits::GET_LOGS_CHUNK.max);
    Ok((chunk, i64::from(skip)))
}

/// The lines `[start, end)` (0-based, counted from the beginning of the output) that a
/// `GetLogsChunk` of `chunk` lines skipping the last `skip` lines selects in an output of `total`
/// lines: the original's window `[total − skip − chunk, total − skip)` clamped to the output.
/// `chunk` ≤ 0 selects nothing; `skip` < 0 counts as 0.
pub fn window_from_end(total: i64, chunk: i64, skip: i64) -> Range<i64> {
    let total = total.max(0);
    if chunk <= 0 {
        return 0..0;
    }
    let end = total.saturating_sub(skip.max(0)).max(0);
    let start = end.saturating_sub(chunk).max(0);
    start..end
}

/// The lines of a stored batch that fall in `window`, given the batch's `line_end` (lines of the
/// output up to and including this batch) and its body.
pub fn lines_in_window<'a>(
    line_end: i64,
    body: &'a str,
    line_count: i64,
    window: &Range<i64>,
) -> impl Iterator<Item = &'a str> + 'a {
    let first = line_end - line_count;
    let skip = (window.start - first).clamp(0, line_count) as usize;
    let take = (window.end.min(line_end) - first.max(window.start)).max(0) as usize;
    body_lines(body).skip(skip).take(take)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(lines: &[&str]) -> PendingBatch {
        let mut b = PendingBatch::default();
        for l in lines {
            b.lines += push_lines(&mut b.body, l);
        }
        b
    }

    #[test]
    fn a_log_budget_keeps_what_fits_then_one_truncation_line() {
        let batches = vec![
            (LogStream::Stdout, batch(&["aaaa", "bbbb"])),
            (LogStream::Stderr, batch(&["cccc", "dddd", "eeee"])),
        ];
        let budget = LogBudget {
            stored: 0,
            truncated: false,
            max: 100,
        };
        assert_eq!(budget.apply(&batches), (batches.clone(), 0));
        let tight = LogBudget { max: 20, ..budget };
        let (kept, dropped) = tight.apply(&batches);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[1], (LogStream::Stderr, batch(&["cccc", "dddd"])));
        assert_eq!(kept[2].1.body, truncation_body());
        assert_eq!(dropped, 5);
        let done = LogBudget {
            truncated: true,
            ..budget
        };
        assert_eq!(done.apply(&batches), (Vec::new(), 25));
    }

    proptest! {
        #[test]
        fn a_log_budget_never_stores_past_its_bound(
            stored in 0u64..200,
            max in 1u64..200,
            lines in proptest::collection::vec("[a-z]{0,30}", 0..20),
        ) {
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let batches = vec![(LogStream::Stdout, batch(&refs))];
            let (kept, _) = LogBudget { stored, truncated: false, max }.apply(&batches);
            let body: u64 = kept
                .iter()
                .filter(|(_, b)| b.body != truncation_body())
                .map(|(_, b)| b.body.len() as u64)
                .sum();
            prop_assert!(body == 0 || stored + body <= max);
            prop_assert!(kept.iter().filter(|(_, b)| b.body == truncation_body()).count() <= 1);
        }
    }

    #[test]
    fn log_types() {
        assert_eq!(LogStream::parse("O").unwrap(), LogStream::Stdout);
        assert_eq!(LogStream::parse("stdout").unwrap(), LogStream::Stdout);
        assert_eq!(LogStream::parse("E").unwrap(), LogStream::Stderr);
        assert_eq!(LogStream::parse("stderr").unwrap(), LogStream::Stderr);
        for bad in ["", "o", "out", "STDOUT", "../etc/passwd", "stdout\n"] {
            assert!(LogStream::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(LogStream::parse_filter(None).unwrap().len(), 2);
        assert_eq!(LogStream::parse_filter(Some("")).unwrap().len(), 2);
        assert_eq!(
            LogStream::parse_filter(Some("stderr")).unwrap(),
            vec![LogStream::Stderr]
        );
        assert!(LogStream::parse_filter(Some("x")).is_err());
    }

    #[test]
    fn lines_and_bodies() {
        let mut body = String::new();
        assert_eq!(push_lines(&mut body, ""), 1);
        assert_eq!(push_lines(&mut body, "a\nb"), 2);
        assert_eq!(push_lines(&mut body, "nul\0here"), 1);
        assert_eq!(body, "\na\nb\nnul\u{FFFD}here\n");
        let lines: Vec<_> = body_lines(&body).collect();
        assert_eq!(lines, ["", "a", "b", "nul\u{FFFD}here"]);
        assert_eq!(body_lines("").count(), 0);
    }

    #[test]
    fn buffer_groups_by_task_in_order() {
        let mut b = IngestBuffer::default();
        b.push(7, LogStream::Stderr, "e");
        b.push(3, LogStream::Stdout, "x");
        b.push(7, LogStream::Stdout, "o1");
        b.push(7, LogStream::Stdout, "o2");
        assert_eq!(b.bytes(), 2 + 2 + 3 + 3);
        assert_eq!(b.keys(), 3);
        let taken = b.take();
        assert!(b.is_empty() && b.bytes() == 0);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0, 3);
        assert_eq!(taken[1].0, 7);
        assert_eq!(taken[1].1[0].0, LogStream::Stdout);
        assert_eq!(taken[1].1[0].1.body, "o1\no2\n");
        assert_eq!(taken[1].1[0].1.lines, 2);
        assert_eq!(taken[1].1[1].0, LogStream::Stderr);
    }

    #[test]
    fn terminal_statuses_end_follow_streams() {
        for s in TaskStatus::ALL {
            let ends = matches!(s.letter(), "S" | "F" | "X");
            assert_eq!(follow_ends(*s, false), ends, "{s}");
            assert!(follow_ends(*s, true), "hidden {s}");
        }
    }

    #[test]
    fn chunk_requests() {
        assert_eq!(chunk_request(3, 10, None).unwrap(), (10, 0));
        assert_eq!(chunk_request(0, 0, Some(5)).unwrap(), (0, 5));
        assert!(chunk_request(1, -1, None).is_err());
        assert!(chunk_request(1, 1, Some(-1)).is_err());
        assert!(chunk_request(CHUNK_MAX_TASKS + 1, 1, None).is_err());
    }

    #[test]
    fn windows() {
        assert_eq!(window_from_end(10, 3, 0), 7..10);
        assert_eq!(window_from_end(10, 3, 8), 0..2);
        assert_eq!(window_from_end(10, 3, 10), 0..0);
        assert_eq!(window_from_end(10, 3, 50), 0..0);
        assert_eq!(window_from_end(10, 0, 0), 0..0);
        assert_eq!(window_from_end(10, -1, 0), 0..0);
        assert_eq!(window_from_end(10, 100, 0), 0..10);
        assert_eq!(window_from_end(0, 5, 0), 0..0);
        assert_eq!(window_from_end(10, 3, -4), 7..10);
    }

    /// Lines worth testing: empty, unicode, long, with characters that look like separators.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z ]{0,12}",
            "[\\u{0}-\\u{10FFFF}&&[^\n\0]]{0,20}",
            "é{0,3}🦀{0,3}\r?",
            "x{200,400}",
        ]
    }

    proptest! {
        #[test]
        fn window_is_clamped(total in 0i64..1_000_000, chunk in -5i64..2_000_000, skip in -5i64..2_000_000) {
            let w = window_from_end(total, chunk, skip);
            prop_assert!(w.start >= 0 && w.start <= w.end && w.end <= total);
            prop_assert!(w.end - w.start <= chunk.max(0));
            if chunk > 0 && skip >= 0 && skip + chunk <= total {
                prop_assert_eq!(w, total - skip - chunk..total - skip);
            }
        }

        /// Splitting an output into arbitrary batches and paging backwards through it with any
        /// chunk size gives exactly the lines a plain list of lines gives.
        #[test]
        fn paging_matches_a_plain_list(
            lines in proptest::collection::vec(line(), 0..60),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            chunk in 1i64..25,
            skip in 0i64..70,
        ) {
            // Batches: split the list of lines at the cut points.
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(lines.len() + 1)).collect();
            points.push(0);
            points.push(lines.len());
            points.sort();
            points.dedup();
            let mut batches = Vec::new();
            let mut line_end = 0i64;
            for pair in points.windows(2) {
                let mut body = String::new();
                let mut count = 0;
                for l in &lines[pair[0]..pair[1]] {
                    count += push_lines(&mut body, l);
                }
                if count > 0 {
                    line_end += i64::from(count);
                    batches.push((line_end, body, i64::from(count)));
                }
            }
            let total = line_end;
            prop_assert_eq!(total, lines.len() as i64);
            let window = window_from_end(total, chunk, skip);
            let got: Vec<&str> = batches
                .iter()
                .flat_map(|(end, body, count)| lines_in_window(*end, body, *count, &window))
                .collect();
            let expected: Vec<&str> = lines[window.start as usize..window.end as usize]
                .iter()
                .map(String::as_str)
                .collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn bodies_round_trip(texts in proptest::collection::vec(line(), 0..30)) {
            let mut buffer = IngestBuffer::default();
            for t in &texts {
                buffer.push(1, LogStream::Stdout, t);
            }
            let bytes = buffer.bytes();
            let taken = buffer.take();
            let (body, count) = match taken.first() {
                Some((_, b)) => (b[0].1.body.clone(), b[0].1.lines),
                None => (String::new(), 0),
            };
            prop_assert_eq!(bytes, body.len());
            prop_assert_eq!(count as usize, texts.len());
            let back: Vec<&str> = body_lines(&body).collect();
            prop_assert_eq!(back, texts.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
