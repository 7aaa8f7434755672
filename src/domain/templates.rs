//! What template scripts answer, checked (as the original's): the `--metadata` object, the
//! `--params` list, the values a run is given, and how `provider_region` parameters are shown
//! (as `str` choices of every `<provider>:<region>` of the catalog). Pure: no process, no SQL.

use serde_json::{Map, Value};

use super::{Error, Result};

/// Parameter types a template may declare.
pub const PARAM_TYPES: [&str; 5] = ["str", "int", "float", "bool", "provider_region"];

/// Longest name or version accepted (they are shown in tables and used as keys).
const MAX_LABEL: usize = 200;

/// The `--metadata` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub description: String,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// Parses the standard output of `--metadata`: a JSON object with `name` and `version` (non-empty
/// strings) and an optional `description`.
pub fn parse_metadata(stdout: &str) -> Result<Metadata> {
    let value: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        invalid(format!(
            "--metadata must print a JSON object {{name, version, description}}: {e}; it printed {}",
            excerpt(stdout)
        ))
    })?;
    let Value::Object(map) = value else {
        return Err(invalid(format!(
            "--metadata must print a JSON object, not {}",
            excerpt(stdout)
        )));
    };
    let label = |key: &str| -> Result<String> {
        let text = match map.get(key) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        if text.is_empty() {
            return Err(invalid(format!("--metadata: `{key}` is required")));
        }
        if text.chars().count() > MAX_LABEL {
            return Err(invalid(format!(
                "--metadata: `{key}` is longer than {MAX_LABEL} characters"
            )));
        }
        Ok(text)
    };
    let name = label("name")?;
    let version = label("version")?;
    if version.eq_ignore_ascii_case("latest") {
        return Err(invalid(
            "--metadata: version \"latest\" is reserved (it selects the newest upload in ListTemplates)",
        ));
    }
    let description = match map.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(Metadata {
        name,
        version,
        description,
    })
}

/// Parses the standard output of `--params`: a JSON list of objects, each with a `name` (unique)
/// and a `type` among [`PARAM_TYPES`]. Returns the list as given (it is stored verbatim).
pub fn parse_params(stdout: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        invalid(format!(
            "--params must print a JSON list of {{name, type, required, default, choices, help}}: {e}; it printed {}",
            excerpt(stdout)
        ))
    })?;
    let Value::Array(items) = &value else {
        return Err(invalid(format!(
            "--params must print a JSON list, not {}",
            excerpt(stdout)
        )));
    };
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(p) = item else {
            return Err(invalid(format!("--params: entry {i} is not an object")));
        };
        let name = match p.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
            _ => return Err(invalid(format!("--params: entry {i} has no `name`"))),
        };
        if !seen.insert(name) {
            return Err(invalid(format!(
                "--params: parameter {name:?} is declared twice"
            )));
        }
        match p.get("type") {
            Some(Value::String(t)) if PARAM_TYPES.contains(&t.as_str()) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "--params: parameter {name:?} has type {other}, expected one of {}",
                    PARAM_TYPES.join(", ")
                )));
            }
            None => {
                return Err(invalid(format!(
                    "--params: parameter {name:?} has no `type`"
                )));
            }
        }
    }
    Ok(value)
}

/// The parameter list as clients see it: each `provider_region` parameter becomes a `str` whose
/// choices are `regions` (`"<provider>:<region>"`). Anything that is not a list passes unchanged.
pub fn show_params(params: &Value, regions: &[String]) -> Value {
    let Value::Array(items) = params else {
        return params.clone();
    };
    let shown = items
        .iter()
        .map(|item| match item {
            Value::Object(p)
                if p.get("type").and_then(Value::as_str) == Some("provider_region") =>
            {
                let mut p = p.clone();
                p.insert("type".into(), Value::String("str".into()));
                p.insert(
                    "choices".into(),
                    Value::Array(regions.iter().cloned().map(Value::String).collect()),
                );
                Value::Object(p)
            }
            other => other.clone(),
        })
        .collect();
    Value::Array(shown)
}

/// Checks the values of a run: a JSON object that gives every required parameter without default.
/// Returns the object, re-serialised compactly for the script's command line.
pub fn check_values(values_json: &str, params: &Value) -> Result<String> {
    if values_json.trim().is_empty() {
        return Err(invalid(
            "param_values_json is required: a JSON object of parameter values, e.g. {} for none",
        ));
    }
    let value: Value = serde_json::from_str(values_json)
        .map_err(|e| invalid(format!("param_values_json is not valid JSON: {e}")))?;
    let Value::Object(values) = &value else {
        return Err(invalid(
            "param_values_json must be a JSON object of parameter values",
        ));
    };
    let missing: Vec<&str> = params
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter(|p| is_required(p) && !values.contains_key(param_name(p)))
        .map(param_name)
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "missing required parameter(s): {}",
            missing.join(", ")
        )));
    }
    Ok(value.to_string())
}

fn param_name(p: &Map<String, Value>) -> &str {
    p.get("name").and_then(Value::as_str).unwrap_or("")
}

fn is_required(p: &Map<String, Value>) -> bool {
    p.get("required").and_then(Value::as_bool).unwrap_or(false)
        && p.get("default").is_none_or(Value::is_null)
}

/// The start of a script's output, for messages.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    let t = text.trim();
    if t.is_empty() {
        return "nothing".into();
    }
    let cut: String = t.chars().take(MAX).collect();
    if cut.len() < t.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_needs_name_and_version() {
        let m = parse_metadata(r#" {"name":"rnaseq","version":"1.0","description":"d"} "#).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("rnaseq", "1.0"));
        assert_eq!(
            parse_metadata(r#"{"name":"x","version":2}"#)
                .unwrap()
                .version,
            "2"
        );
        for bad in [
            "",
            "hello",
            "[]",
            r#"{"version":"1"}"#,
            r#"{"name":"","version":"1"}"#,
            r#"{"name":"x"}"#,
            r#"{"name":"x","version":"latest"}"#,
        ] {
            assert!(parse_metadata(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params_need_unique_names_and_known_types() {
        let ok =
            r#"[{"name":"a","type":"int","required":true},{"name":"r","type":"provider_region"}]"#;
        assert_eq!(parse_params(ok).unwrap().as_array().unwrap().len(), 2);
        assert!(parse_params("[]").is_ok());
        for bad in [
            "{}",
            "garbage",
            r#"[1]"#,
            r#"[{"type":"int"}]"#,
            r#"[{"name":"a"}]"#,
            r#"[{"name":"a","type":"list"}]"#,
            r#"[{"name":"a","type":"int"},{"name":"a","type":"str"}]"#,
        ] {
            assert!(parse_params(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn provider_regions_become_choices() {
        let p =
            parse_params(r#"[{"name":"r","type":"provider_region"},{"name":"n","type":"int"}]"#)
                .unwrap();
        let shown = show_params(&p, &["local.local:local".into(), "azure.a:swe".into()]);
        assert_eq!(shown[0]["type"], "str");
        assert_eq!(shown[0]["choices"][1], "azure.a:swe");
        assert_eq!(shown[1], p[1]);
    }

    #[test]
    fn values_must_be_an_object_with_the_required_parameters() {
        let p = parse_params(
            r#"[{"name":"a","type":"int","required":true},
                {"name":"b","type":"int","required":true,"default":3},
                {"name":"c","type":"str"}]"#,
        )
        .unwrap();
        assert_eq!(check_values(r#"{"a": 1}"#, &p).unwrap(), r#"{"a":1}"#);
        for bad in ["", "not json", "[1]", "{}", r#"{"b":1}"#] {
            assert!(check_values(bad, &p).is_err(), "{bad:?}");
        }
    }
}
