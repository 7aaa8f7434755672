//! Pure rules of worker events (as the original scitq's): level letters, `details_json` validation,
//! list limits, and which prunes are allowed. No I/O here.

use chrono::{DateTime, Utc};

use super::{Error, Result};

/// Severity of a worker event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl EventLevel {
    /// The letter stored in `worker_event.level`.
    pub fn letter(self) -> &'static str {
        match self {
            EventLevel::Debug => "D",
            EventLevel::Info => "I",
            EventLevel::Warning => "W",
            EventLevel::Error => "E",
        }
    }

    /// Parses exactly one of `D`, `I`, `W`, `E`.
    pub fn parse(level: &str) -> Result<EventLevel> {
        match level {
            "D" => Ok(EventLevel::Debug),
            "I" => Ok(EventLevel::Info),
            "W" => Ok(EventLevel::Warning),
            "E" => Ok(EventLevel::Error),
            other => Err(Error::Invalid(format!(
                "invalid event level {other:?}: expected one of D, I, W, E"
            ))),
        }
    }

    /// The level of a reported event: empty means `I` (the column's default, as in the original).
    pub fn parse_reported(level: &str) -> Result<EventLevel> {
        if level.is_empty() {
            Ok(EventLevel::Info)
        } else {
            EventLevel::parse(level)
        }
    }

    /// A level filter: absent or empty means any level.
    pub fn parse_filter(level: Option<&str>) -> Result<Option<EventLevel>> {
        match level {
            None | Some("") => Ok(None),
            Some(l) => EventLevel::parse(l).map(Some),
        }
    }
}

/// How many events ListWorkerEvents returns when the request gives no (or a non-positive) limit.
pub const DEFAULT_LIST_LIMIT: i64 = 50;
/// The most events one ListWorkerEvents returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// The limit a list request gets: default 50, at most 1000.
pub fn list_limit(requested: Option<i32>) -> i64 {
    match requested {
        Some(n) if n > 0 => i64::from(n).min(MAX_LIST_LIMIT),
        _ => DEFAULT_LIST_LIMIT,
    }
}

/// Validates `details_json`: empty (or blank) means no details (stored as NULL); anything else must
/// be one JSON value.
pub fn parse_details(details_json: &str) -> Result<Option<serde_json::Value>> {
    if details_json.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(details_json)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("details_json is not valid JSON: {e}")))
}

/// The class of a reported event: required (events are listed and pruned by class).
pub fn event_class(class: &str) -> Result<&str> {
    if class.trim().is_empty() {
        return Err(Error::Invalid(
            "event_class is required (e.g. install, bootstrap, runtime, network)".into(),
        ));
    }
    Ok(class)
}

/// An optional text filter: absent or empty means no filter.
pub fn text_filter(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// What PruneWorkerEvents may match.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneFilter {
    pub before: Option<DateTime<Utc>>,
    pub level: Option<EventLevel>,
    pub class: Option<String>,
    pub worker_id: Option<i32>,
    pub dry_run: bool,
}

impl PruneFilter {
    /// Checks a prune request: `before` must be RFC 3339 when given, and a prune that deletes must
    /// give `before` (pruning "everything, whenever" by accident is refused; a dry run may count
    /// without it).
    pub fn new(
        before: Option<&str>,
        level: Option<&str>,
        class: Option<&str>,
        worker_id: Option<i32>,
        dry_run: bool,
    ) -> Result<PruneFilter> {
        let before = match text_filter(before) {
            None => None,
            Some(b) => Some(
                DateTime::parse_from_rfc3339(b)
                    .map_err(|e| {
                        Error::Invalid(format!(
                            "invalid before {b:?}: expected RFC 3339 such as 2025-08-19T00:00:00Z ({e})"
                        ))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        if before.is_none() && !dry_run {
            return Err(Error::Invalid(
                "refusing to prune without `before`: give a cut-off time, or set dry_run to count"
                    .into(),
            ));
        }
        Ok(PruneFilter {
            before,
            level: EventLevel::parse_filter(level)?,
            class: super::filters::text_filter("class", text_filter(class).map(str::to_string))?,
            worker_id,
            dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for (s, l) in [
            ("D", EventLevel::Debug),
            ("I", EventLevel::Info),
            ("W", EventLevel::Warning),
            ("E", EventLevel::Error),
        ] {
            assert_eq!(EventLevel::parse(s).unwrap(), l);
            assert_eq!(l.letter(), s);
        }
        for bad in ["", "i", "X", "II", "Error"] {
            assert!(EventLevel::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(EventLevel::parse_reported("").unwrap(), EventLevel::Info);
        assert!(EventLevel::parse_reported("x").is_err());
        assert_eq!(EventLevel::parse_filter(Some("")).unwrap(), None);
        assert!(EventLevel::parse_filter(Some("Q")).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(list_limit(None), 50);
        assert_eq!(list_limit(Some(0)), 50);
        assert_eq!(list_limit(Some(-3)), 50);
        assert_eq!(list_limit(Some(7)), 7);
        assert_eq!(list_limit(Some(1000)), 1000);
        assert_eq!(list_limit(Some(i32::MAX)), 1000);
    }

    #[test]
    fn details() {
        assert_eq!(parse_details("").unwrap(), None);
        assert_eq!(parse_details("  \n").unwrap(), None);
        assert_eq!(
            parse_details(r#"{"a": [1, 2]}"#).unwrap(),
            Some(serde_json::json!({"a": [1, 2]}))
        );
        assert_eq!(parse_details("3").unwrap(), Some(serde_json::json!(3)));
        for bad in ["{", "{a: 1}", "'x'", "1 2", "nul"] {
            assert!(parse_details(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prune_rules() {
        assert!(PruneFilter::new(None, None, None, None, false).is_err());
        assert!(PruneFilter::new(Some(""), None, None, None, false).is_err());
        assert!(PruneFilter::new(Some("yesterday"), None, None, None, true).is_err());
        assert!(PruneFilter::new(Some("2025-08-19"), None, None, None, true).is_err());
        assert!(
            PruneFilter::new(Some("2025-08-19T00:00:00Z"), Some("Z"), None, None, false).is_err()
        );
        let dry = PruneFilter::new(None, Some("W"), Some(""), Some(4), true).unwrap();
        assert_eq!(dry.before, None);
        assert_eq!(dry.level, Some(EventLevel::Warning));
        assert_eq!(dry.class, None);
        let f = PruneFilter::new(
            Some("2025-08-19T02:00:00+02:00"),
            None,
            Some("install"),
            None,
            false,
        )
        .unwrap();
        assert_eq!(f.before.unwrap().to_rfc3339(), "2025-08-19T00:00:00+00:00");
        assert_eq!(f.class.as_deref(), Some("install"));
    }
}
