//! Text filters of List RPCs (ListTasks `command_filter`, ListWorkerEvents/PruneWorkerEvents
//! `class`, the text values of a protofilter): how long one may be and how it is matched. A
//! substring filter is matched as plain text (`strpos` on lower-cased text in SQL), never as a
//! pattern or a regular expression, so one comparison costs time linear in the text it scans; the
//! length cap bounds what a single request can make the database do per row.

use super::{Error, Result};

/// Longest text filter accepted (bytes). Real filters are a word or two.
pub const MAX_TEXT_FILTER_BYTES: usize = 256;

/// An optional text filter: absent or empty means no filter; longer than
/// [`MAX_TEXT_FILTER_BYTES`] is refused, naming `field`.
pub fn text_filter(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => {
            check_length(field, &v)?;
            Ok(Some(v))
        }
    }
}

/// Refuses a filter value longer than [`MAX_TEXT_FILTER_BYTES`].
pub fn check_length(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TEXT_FILTER_BYTES {
        return Err(Error::Invalid(format!(
            "{field} too long: {} bytes (at most {MAX_TEXT_FILTER_BYTES})",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_no_filter() {
        assert_eq!(text_filter("command_filter", None).unwrap(), None);
        assert_eq!(
            text_filter("command_filter", Some(String::new())).unwrap(),
            None
        );
    }

    #[test]
    fn length_is_capped() {
        let at_cap = "x".repeat(MAX_TEXT_FILTER_BYTES);
        assert_eq!(
            text_filter("command_filter", Some(at_cap.clone())).unwrap(),
            Some(at_cap)
        );
        let over = "é".repeat(MAX_TEXT_FILTER_BYTES / 2 + 1);
        let Err(Error::Invalid(message)) = text_filter("command_filter", Some(over)) else {
            panic!("a filter over the cap must be refused");
        };
        assert!(
            message.starts_with("command_filter too long: 258 bytes"),
            "{message}"
        );
    }
}
