//! Limits at the door: the size and count bounds every request is checked against before any work
//! is done, and the page sizes of every List RPC. Each bound is a named constant (the README lists
//! them); the checks are pure and answer a domain error naming the field and the bound, never
//! echoing more than `MAX_ECHO_BYTES` of the input.
//!
//! What is not here: filters of ListTasks/ListWorkflows (their own shorter cap lives with the
//! filter rules), log volume per task and follower counts (configuration, see `config`).

use super::{Error, Result};

/// Names: of workers, workflows, steps, users, templates, providers, regions, flavors, task names,
/// statuses, log types, event classes. Postgres identifiers and DNS labels are shorter still.
pub const MAX_NAME_BYTES: usize = 255;
/// Free text: commands, shell names, container options, descriptions, protofilters, job log lines,
/// event messages and details, error messages.
pub const MAX_TEXT_BYTES: usize = 64 << 10;
/// All the text fields of one task together (command, container, options, inputs, resources,
/// output, name): a ping answer of many tasks stays far below the message limit.
pub const MAX_TASK_BYTES: usize = 1 << 20;
/// A template script, and the parameter values of one run: scripts are code, larger than free text.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// Entries of one id list (task, worker, job, step ids), or of a task's inputs, resources or
/// prerequisites, or of a flavor's regions.
pub const MAX_IDS: usize = 10_000;
/// Concurrency of a worker or recruiter (tasks at once), and its bounds.
pub const MAX_CONCURRENCY: i32 = 10_000;
/// Prefetch of a worker or recruiter (tasks held ahead), and `max_workers`/`rounds` of a recruiter.
pub const MAX_PREFETCH: i32 = 10_000;
/// The longest task or recruiter timeout: 30 days, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// URIs: task inputs, resources and outputs, FetchList/FetchInfo targets, workspace roots.
pub const MAX_URI_BYTES: usize = 4 << 10;
/// The most bytes of input an error message quotes.
pub const MAX_ECHO_BYTES: usize = 200;
/// The longest error message a client is sent: a fixed text plus at most one excerpt of input.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// The page size of one List RPC: what an absent limit gets, and the most rows one answer holds.
/// A larger limit is clamped to `max` (the original's clients ask for very large pages to mean
/// "everything"); a negative one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub rpc: &'static str,
    pub default: i64,
    pub max: i64,
}

/// ListTasks: the original's clients list without a limit and expect every task.
pub const LIST_TASKS: Page = Page {
    rpc: "ListTasks",
    default: 100_000,
    max: 100_000,
};
/// ListWorkers takes no limit: the row cap is far above any fleet.
pub const LIST_WORKERS: Page = Page {
    rpc: "ListWorkers",
    default: 10_000,
    max: 10_000,
};
/// ListJobs: the newest 1,000 by default.
pub const LIST_JOBS: Page = Page {
    rpc: "ListJobs",
    default: 1_000,
    max: 100_000,
};
pub const LIST_WORKFLOWS: Page = Page {
    rpc: "ListWorkflows",
    default: 10_000,
    max: 10_000,
};
pub const LIST_STEPS: Page = Page {
    rpc: "ListSteps",
    default: 10_000,
    max: 10_000,
};
/// ListUsers takes no limit.
pub const LIST_USERS: Page = Page {
    rpc: "ListUsers",
    default: 10_000,
    max: 10_000,
};
/// ListRecruiters takes no limit.
pub const LIST_RECRUITERS: Page = Page {
    rpc: "ListRecruiters",
    default: 10_000,
    max: 10_000,
};
/// ListTemplates takes no limit.
pub const LIST_TEMPLATES: Page = Page {
    rpc: "ListTemplates",
    default: 10_000,
    max: 10_000,
};
/// ListTemplateRuns takes no limit.
pub const LIST_TEMPLATE_RUNS: Page = Page {
    rpc: "ListTemplateRuns",
    default: 10_000,
    max: 10_000,
};
/// ListProviders takes no limit.
pub const LIST_PROVIDERS: Page = Page {
    rpc: "ListProviders",
    default: 10_000,
    max: 10_000,
};
/// ListRegions takes no limit.
pub const LIST_REGIONS: Page = Page {
    rpc: "ListRegions",
    default: 10_000,
    max: 10_000,
};
/// ListFlavors: its `limit` is not optional in the proto (0 lists nothing); it is clamped to `max`.
pub const LIST_FLAVORS: Page = Page {
    rpc: "ListFlavors",
    default: 10_000,
    max: 10_000,
};
/// ListWorkerEvents: the newest 50 by default.
pub const LIST_WORKER_EVENTS: Page = Page {
    rpc: "ListWorkerEvents",
    default: 50,
    max: 1_000,
};
/// GetLogsChunk: lines per task and output (`chunkSize`, not optional in the proto: 0 selects
/// nothing, as the original).
pub const GET_LOGS_CHUNK: Page = Page {
    rpc: "GetLogsChunk",
    default: 100,
    max: 100_000,
};

/// Every page, for the README table and tests.
pub const PAGES: &[Page] = &[
    LIST_TASKS,
    LIST_WORKERS,
    LIST_JOBS,
    LIST_WORKFLOWS,
    LIST_STEPS,
    LIST_USERS,
    LIST_RECRUITERS,
    LIST_TEMPLATES,
    LIST_TEMPLATE_RUNS,
    LIST_PROVIDERS,
    LIST_REGIONS,
    LIST_FLAVORS,
    LIST_WORKER_EVENTS,
    GET_LOGS_CHUNK,
];

impl Page {
    /// The rows an answer may hold for `asked`: absent → the default, larger than the maximum →
    /// the maximum, negative → refused. Zero is returned as is (each RPC says what it means).
    pub fn rows(&self, field: &str, asked: Option<i32>) -> Result<i64> {
        match asked {
            None => Ok(self.default),
            Some(n) if n < 0 => Err(Error::Invalid(format!(
                "{field} must not be negative (got {n})"
            ))),
            Some(n) => Ok(i64::from(n).min(self.max)),
        }
    }
}

/// The longest prefix of `s` of at most `MAX_ECHO_BYTES` bytes, cut at a character boundary, with
/// "…" when something was cut: what an error message may quote of an input.
pub fn excerpt(s: &str) -> String {
    clip(s, MAX_ECHO_BYTES)
}

/// The longest prefix of `s` of at most `max` bytes (`max` ≥ 3), cut at a character boundary,
/// ending in "…" when something was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn too_long(field: &str, len: usize, max: usize) -> Error {
    Error::Invalid(format!(
        "{field} is {len} bytes, more than the {max} bytes allowed"
    ))
}

/// A string of at most `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(too_long(field, value.len(), max));
    }
    Ok(())
}

/// A name: at most `MAX_NAME_BYTES`.
pub fn check_name(field: &str, value: &str) -> Result<()> {
    check_len(field, value, MAX_NAME_BYTES)
}

/// Free text: at most `MAX_TEXT_BYTES`.
pub fn check_text(field: &str, value: &str) -> Result<()> {
    check_len(field, value, MAX_TEXT_BYTES)
}

/// A URI: at most `MAX_URI_BYTES`.
pub fn check_uri(field: &str, value: &str) -> Result<()> {
    check_len(field, value, MAX_URI_BYTES)
}

/// A list of at most `MAX_IDS` entries.
pub fn check_count(field: &str, len: usize) -> Result<()> {
    if len > MAX_IDS {
        return Err(Error::Invalid(format!(
            "{field} has {len} entries, more than the {MAX_IDS} allowed"
        )));
    }
    Ok(())
}

/// A list of URIs: at most `MAX_IDS` of them, each at most `MAX_URI_BYTES`.
pub fn check_uris(field: &str, values: &[String]) -> Result<()> {
    check_count(field, values.len())?;
    values.iter().try_for_each(|v| check_uri(field, v))
}

/// A value within `0..=max`.
pub fn check_range(field: &str, value: i32, max: i32) -> Result<()> {
    if !(0..=max).contains(&value) {
        return Err(Error::Invalid(format!(
            "{field} must be between 0 and {max} (got {value})"
        )));
    }
    Ok(())
}

/// A concurrency: `0..=MAX_CONCURRENCY`.
pub fn check_concurrency(field: &str, value: i32) -> Result<()> {
    check_range(field, value, MAX_CONCURRENCY)
}

/// A prefetch: `0..=MAX_PREFETCH`.
pub fn check_prefetch(field: &str, value: i32) -> Result<()> {
    check_range(field, value, MAX_PREFETCH)
}

/// A timeout in seconds: finite, not negative, at most `MAX_TIMEOUT_SECS`.
pub fn check_timeout(field: &str, seconds: f64) -> Result<()> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Error::Invalid(format!(
            "{field} must be a finite, non-negative number of seconds"
        )));
    }
    if seconds > MAX_TIMEOUT_SECS as f64 {
        return Err(Error::Invalid(format!(
            "{field} must be at most {MAX_TIMEOUT_SECS} seconds (30 days), got {seconds:.0}"
        )));
    }
    Ok(())
}

/// The fields of one task together: at most `MAX_TASK_BYTES`.
pub fn check_task_bytes(total: usize) -> Result<()> {
    if total > MAX_TASK_BYTES {
        return Err(Error::Invalid(format!(
            "the task's fields are {total} bytes in all, more than the {MAX_TASK_BYTES} bytes allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_default_clamp_and_refuse_negatives() {
        assert_eq!(LIST_JOBS.rows("limit", None), Ok(1_000));
        assert_eq!(LIST_JOBS.rows("limit", Some(100_000)), Ok(100_000));
        assert_eq!(LIST_WORKFLOWS.rows("limit", Some(i32::MAX)), Ok(10_000));
        assert_eq!(LIST_TASKS.rows("limit", Some(0)), Ok(0));
        assert!(LIST_TASKS.rows("limit", Some(-1)).is_err());
        for page in PAGES {
            assert!(page.default >= 1 && page.default <= page.max, "{page:?}");
        }
    }

    #[test]
    fn checks_name_the_field_and_bound_without_echoing() {
        let huge = "x".repeat(10 << 20);
        let Err(Error::Invalid(m)) = check_name("name", &huge) else {
            panic!("a 10 MB name must be refused")
        };
        assert!(m.contains("name") && m.contains("255"), "{m}");
        assert!(m.len() <= MAX_ECHO_BYTES);
        assert!(check_name("name", &"é".repeat(127)).is_ok());
        assert!(check_concurrency("concurrency", i32::MAX).is_err());
        assert!(check_concurrency("concurrency", -1).is_err());
        assert!(check_concurrency("concurrency", MAX_CONCURRENCY).is_ok());
        assert!(check_timeout("running_timeout", 3e38).is_err());
        assert!(check_timeout("running_timeout", f64::NAN).is_err());
        assert!(check_timeout("running_timeout", -1.0).is_err());
        assert!(check_timeout("running_timeout", MAX_TIMEOUT_SECS as f64).is_ok());
        assert!(check_count("task_ids", MAX_IDS + 1).is_err());
    }

    proptest! {
        #[test]
        fn excerpts_are_bounded_prefixes(s in "\\PC{0,400}") {
            let e = excerpt(&s);
            prop_assert!(e.len() <= MAX_ECHO_BYTES);
            let kept = e.strip_suffix('…').unwrap_or(&e);
            prop_assert!(s.starts_with(kept));
        }
    }
}
