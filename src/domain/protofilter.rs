//! Protofilter (as the original scitq's): the flavor-selection language of ListFlavors and
//! recruiters (`cpu>=8:mem>=30:region is default`), parsed into a closed set of fields, comparisons
//! and typed values. Nothing the user wrote can become SQL text: `db::catalog` maps each
//! [`NumField`], [`TextField`], [`BoolField`] and [`Cmp`] to a fixed fragment and binds every value
//! as a parameter. Parsing is linear in the input, bounded in size, and never panics
//! (property-tested below).

use super::{Error, Result};

/// Longest filter accepted (bytes); a real one is a few dozen.
pub const MAX_FILTER_LEN: usize = 4096;
/// Most conditions in one filter: bounds the size of the SQL built from it.
pub const MAX_CONDITIONS: usize = 32;

/// Numeric columns: any comparison but `~`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumField {
    Cpu,
    Mem,
    Disk,
    Bandwidth,
    Gpumem,
    Eviction,
    Cost,
    FlavorId,
    ProviderId,
    RegionId,
}

/// Text columns: `=` (exact) or `~` (SQL LIKE, the user writes the `%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// The provider's full name, `provider_name.config_name`.
    Provider,
    Region,
    Flavor,
    Gpu,
}

/// Boolean columns: a bare name means true; otherwise `=` with a boolean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolField {
    HasGpu,
    HasQuickDisks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
}

/// One condition of a filter; all of a filter's conditions must hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Num {
        field: NumField,
        cmp: Cmp,
        value: f64,
    },
    Bool {
        field: BoolField,
        value: bool,
    },
    TextEq {
        field: TextField,
        value: String,
    },
    TextLike {
        field: TextField,
        pattern: String,
    },
    /// `region is default`.
    RegionIsDefault,
}

/// A parsed filter: the conjunction of its conditions (none = every flavor).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

enum Kind {
    Num(NumField),
    Text(TextField),
    Bool(BoolField),
}

/// The whitelist of field names (the original's mapping).
fn field(name: &str) -> Option<Kind> {
    use Kind::*;
    Some(match name {
        "cpu" => Num(NumField::Cpu),
        "mem" | "memory" => Num(NumField::Mem),
        "disk" => Num(NumField::Disk),
        "bandwidth" => Num(NumField::Bandwidth),
        "gpumem" => Num(NumField::Gpumem),
        "eviction" => Num(NumField::Eviction),
        "cost" => Num(NumField::Cost),
        "flavor_id" => Num(NumField::FlavorId),
        "provider_id" => Num(NumField::ProviderId),
        "region_id" => Num(NumField::RegionId),
        "provider" => Text(TextField::Provider),
        "region" | "region_name" => Text(TextField::Region),
        "flavor" | "flavor_name" => Text(TextField::Flavor),
        "gpu" => Text(TextField::Gpu),
        "has_gpu" => Bool(BoolField::HasGpu),
        "has_quick_disks" => Bool(BoolField::HasQuickDisks),
        _ => return None,
    })
}

const KNOWN_FIELDS: &str = "cpu, mem, disk, bandwidth, gpumem, eviction, cost, flavor_id, \
     provider_id, region_id, provider, region, flavor, gpu, has_gpu, has_quick_disks";

/// The comparison operators, longest first so `>=` is not read as `>`.
const OPERATORS: &[(&str, Option<Cmp>)] = &[
    (">=", Some(Cmp::Ge)),
    ("<=", Some(Cmp::Le)),
    ("==", Some(Cmp::Eq)),
    (">", Some(Cmp::Gt)),
    ("<", Some(Cmp::Lt)),
    ("=", Some(Cmp::Eq)),
    ("~", None), // LIKE
];

/// Shortens a token for an error message (char-boundary safe).
fn shown(token: &str) -> String {
    const MAX: usize = 60;
    if token.chars().count() <= MAX {
        token.to_string()
    } else {
        let cut: String = token.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

fn bad(token: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "invalid protofilter token {:?}: {why}",
        shown(token)
    ))
}

/// Parses a filter. Tokens are separated by `:`, blanks around them trimmed, empty ones ignored.
pub fn parse(input: &str) -> Result<Filter> {
    if input.len() > MAX_FILTER_LEN {
        return Err(Error::Invalid(format!(
            "protofilter too long: {} bytes (at most {MAX_FILTER_LEN})",
            input.len()
        )));
    }
    let mut conditions = Vec::new();
    for token in input.split(':').map(str::trim).filter(|t| !t.is_empty()) {
        if conditions.len() == MAX_CONDITIONS {
            return Err(Error::Invalid(format!(
                "protofilter has more than {MAX_CONDITIONS} conditions"
            )));
        }
        conditions.push(parse_token(token)?);
    }
    Ok(Filter { conditions })
}

fn parse_token(token: &str) -> Result<Condition> {
    let name_len = token
        .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
        .unwrap_or(token.len());
    if name_len == 0 {
        return Err(bad(token, "expected a field name (letters and '_')"));
    }
    let name = token[..name_len].to_ascii_lowercase();
    let kind = field(&name).ok_or_else(|| {
        bad(
            token,
            format_args!("unknown field {name:?} (known: {KNOWN_FIELDS})"),
        )
    })?;
    let rest = token[name_len..].trim_start();

    if rest.is_empty() {
        return match kind {
            Kind::Bool(field) => Ok(Condition::Bool { field, value: true }),
            _ => Err(bad(
                token,
                format_args!("field {name:?} needs a comparison"),
            )),
        };
    }
    if let Some(after) = rest.strip_prefix("is")
        && after.starts_with(char::is_whitespace)
    {
        let value = after.trim();
        return match (&kind, value) {
            (Kind::Text(TextField::Region), "default") => Ok(Condition::RegionIsDefault),
            _ => Err(bad(token, "'is' is only valid as 'region is default'")),
        };
    }
    let (op, cmp) = OPERATORS
        .iter()
        .find(|(op, _)| rest.starts_with(op))
        .ok_or_else(|| bad(token, "expected an operator (>=, <=, >, <, =, ==, ~ or is)"))?;
    let value = rest[op.len()..].trim();
    if value.is_empty() {
        return Err(bad(token, format_args!("missing value after {op:?}")));
    }
    if value.contains(char::is_whitespace) {
        return Err(bad(token, "a value cannot contain blanks"));
    }
    if matches!(kind, Kind::Text(_)) {
        super::filters::check_length("protofilter text value", value)?;
    }
    match (kind, cmp) {
        (Kind::Num(field), Some(cmp)) => {
            let value: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| bad(token, format_args!("{value:?} is not a number")))?;
            Ok(Condition::Num {
                field,
                cmp: *cmp,
                value,
            })
        }
        (Kind::Num(_), None) => Err(bad(token, "'~' applies to text fields only")),
        (Kind::Text(field), Some(Cmp::Eq)) => Ok(Condition::TextEq {
            field,
            value: value.to_string(),
        }),
        (Kind::Text(field), None) => Ok(Condition::TextLike {
            field,
            pattern: value.to_string(),
        }),
        (Kind::Text(_), Some(_)) => Err(bad(token, "text fields accept only '=' or '~'")),
        (Kind::Bool(field), Some(Cmp::Eq)) => {
            let value = match value.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => true,
                "false" | "f" | "no" | "n" | "0" => false,
                _ => return Err(bad(token, format_args!("{value:?} is not a boolean"))),
            };
            Ok(Condition::Bool { field, value })
        }
        (Kind::Bool(_), _) => Err(bad(token, "boolean fields accept only '='")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Vec<Condition> {
        parse(s).unwrap().conditions
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{s:?} should not parse: {other:?}"),
        }
    }

    #[test]
    fn the_documented_examples() {
        assert_eq!(
            ok("cpu>=8:mem>=30"),
            vec![
                Condition::Num {
                    field: NumField::Cpu,
                    cmp: Cmp::Ge,
                    value: 8.0
                },
                Condition::Num {
                    field: NumField::Mem,
                    cmp: Cmp::Ge,
                    value: 30.0
                },
            ]
        );
        assert_eq!(
            ok("provider=azure.primary:region is default"),
            vec![
                Condition::TextEq {
                    field: TextField::Provider,
                    value: "azure.primary".into()
                },
                Condition::RegionIsDefault,
            ]
        );
        assert_eq!(
            ok("region~%central%"),
            vec![Condition::TextLike {
                field: TextField::Region,
                pattern: "%central%".into()
            }]
        );
        assert_eq!(
            ok("flavor_name=Standard_D8s_v3"),
            vec![Condition::TextEq {
                field: TextField::Flavor,
                value: "Standard_D8s_v3".into()
            }]
        );
    }

    #[test]
    fn blanks_empty_tokens_booleans_and_operators() {
        assert!(ok("").is_empty());
        assert!(ok(" : :: ").is_empty());
        assert_eq!(
            ok(" cpu > 2 : has_gpu : has_quick_disks=false "),
            vec![
                Condition::Num {
                    field: NumField::Cpu,
                    cmp: Cmp::Gt,
                    value: 2.0
                },
                Condition::Bool {
                    field: BoolField::HasGpu,
                    value: true
                },
                Condition::Bool {
                    field: BoolField::HasQuickDisks,
                    value: false
                },
            ]
        );
        assert_eq!(
            ok("cost<=0.5:eviction<5:cpu==4"),
            vec![
                Condition::Num {
                    field: NumField::Cost,
                    cmp: Cmp::Le,
                    value: 0.5
                },
                Condition::Num {
                    field: NumField::Eviction,
                    cmp: Cmp::Lt,
                    value: 5.0
                },
                Condition::Num {
                    field: NumField::Cpu,
                    cmp: Cmp::Eq,
                    value: 4.0
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_bad_token() {
        assert!(err("cpu>=8:bogus=1").contains("\"bogus=1\""));
        assert!(err("cpu>=eight").contains("not a number"));
        assert!(err("cpu~8").contains("text fields only"));
        assert!(err("region>x").contains("only '=' or '~'"));
        assert!(err("cpu is default").contains("region is default"));
        assert!(err("region is nothing").contains("region is default"));
        assert!(err("cpu").contains("needs a comparison"));
        assert!(err("has_gpu>1").contains("only '='"));
        assert!(err("has_gpu=maybe").contains("not a boolean"));
        assert!(err("cpu>=").contains("missing value"));
        assert!(err(">=8").contains("field name"));
        assert!(err("cpu>=8 OR 1=1").contains("blanks"));
        assert!(err("cpu>=NaN").contains("not a number"));
        assert!(err("cpu>=inf").contains("not a number"));
        assert!(err("cpu!8").contains("operator"));
        assert!(err(&"x".repeat(MAX_FILTER_LEN + 1)).contains("too long"));
        assert!(err(&"cpu>1:".repeat(MAX_CONDITIONS + 1)).contains("conditions"));
    }

    #[test]
    fn injection_attempts_are_values_or_errors() {
        // The classic: refused, since the value would contain blanks.
        assert!(parse("cpu>=1;DROP TABLE worker").is_err());
        // Without blanks it is a value, bound as a parameter and never spliced into SQL.
        assert_eq!(
            ok("region='eu';DROP--"),
            vec![Condition::TextEq {
                field: TextField::Region,
                value: "'eu';DROP--".into()
            }]
        );
        assert!(parse("cpu>=1;DROP").is_err(), "not a number");
        assert!(parse("cpu;drop>=1").is_err());
        assert!(parse("région=x").is_err());
    }

    #[test]
    fn long_unicode_is_cut_on_a_char_boundary() {
        let token = format!("bogus={}", "é".repeat(200));
        assert!(err(&token).contains('…'));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_filter_shaped_noise(
            s in "([a-z_]{0,12}[ ]?(>=|<=|==|>|<|=|~| is )?[ ]?[-a-z0-9.%_'\";()*]{0,12}:?){0,12}"
        ) {
            if let Ok(f) = parse(&s) {
                prop_assert!(f.conditions.len() <= MAX_CONDITIONS);
            }
        }

        #[test]
        fn numbers_round_trip(v in -1.0e12f64..1.0e12, op in prop::sample::select(vec![">=", "<=", ">", "<", "=", "=="])) {
            let f = parse(&format!("mem{op}{v}")).unwrap();
            match &f.conditions[..] {
                [Condition::Num { field: NumField::Mem, value, .. }] => prop_assert_eq!(*value, v),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn text_values_are_kept_verbatim(v in "[^\\s:=~][^\\s:]{0,39}") {
            let f = parse(&format!("flavor={v}")).unwrap();
            prop_assert_eq!(f.conditions, vec![Condition::TextEq { field: TextField::Flavor, value: v.clone() }]);
        }
    }

    #[test]
    fn huge_input_is_refused() {
        let s = "cpu>=1:".repeat(1_000_000);
        assert!(err(&s).contains("too long"));
        let s = "\u{1F600}".repeat(MAX_FILTER_LEN);
        assert!(err(&s).contains("too long"));
    }
}
