//! Protofilter → SQL: [`filter_sql`] emits only fixed fragments chosen by the parsed enums of
//! `domain::protofilter`, and every value as a `$n` parameter; no text of the filter reaches the
//! SQL string (property-tested below).

use tokio_postgres::types::ToSql;

use crate::domain::protofilter::{BoolField, Cmp, Condition, Filter, NumField, TextField};

/// A bound value of a compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    F64(f64),
    Text(String),
    Bool(bool),
}

impl Param {
    pub(super) fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::F64(v) => v,
            Param::Text(v) => v,
            Param::Bool(v) => v,
        }
    }
}

fn num_column(f: NumField) -> &'static str {
    match f {
        NumField::Cpu => "f.cpu::float8",
        NumField::Mem => "f.mem",
        NumField::Disk => "f.disk",
        NumField::Bandwidth => "COALESCE(f.bandwidth, 0)::float8",
        NumField::Gpumem => "COALESCE(f.gpumem, 0)::float8",
        NumField::Eviction => "fr.eviction",
        NumField::Cost => "fr.cost",
        NumField::FlavorId => "f.flavor_id::float8",
        NumField::ProviderId => "f.provider_id::float8",
        NumField::RegionId => "fr.region_id::float8",
    }
}

fn text_column(f: TextField) -> &'static str {
    match f {
        TextField::Provider => "(p.provider_name || '.' || p.config_name)",
        TextField::Region => "r.region_name",
        TextField::Flavor => "f.flavor_name",
        TextField::Gpu => "COALESCE(f.gpu, '')",
    }
}

fn bool_column(f: BoolField) -> &'static str {
    match f {
        BoolField::HasGpu => "f.has_gpu",
        BoolField::HasQuickDisks => "f.has_quick_disks",
    }
}

fn cmp_sql(c: Cmp) -> &'static str {
    match c {
        Cmp::Ge => ">=",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Lt => "<",
        Cmp::Eq => "=",
    }
}

/// Compiles `filter` to a WHERE condition (`TRUE` for no condition) whose parameters are numbered
/// from `$first`, and the values to bind to them.
pub fn filter_sql(filter: &Filter, first: usize) -> (String, Vec<Param>) {
    let mut parts: Vec<String> = Vec::with_capacity(filter.conditions.len());
    let mut params = Vec::new();
    let next = |p: Param, params: &mut Vec<Param>| {
        params.push(p);
        first + params.len() - 1
    };
    for c in &filter.conditions {
        let part = match c {
            Condition::Num { field, cmp, value } => {
                let n = next(Param::F64(*value), &mut params);
                format!("{} {} ${n}::float8", num_column(*field), cmp_sql(*cmp))
            }
            Condition::TextEq { field, value } => {
                let n = next(Param::Text(value.clone()), &mut params);
                format!("{} = ${n}::text", text_column(*field))
            }
            Condition::TextLike { field, pattern } => {
                let n = next(Param::Text(pattern.clone()), &mut params);
                format!("{} LIKE ${n}::text", text_column(*field))
            }
            Condition::Bool { field, value } => {
                let n = next(Param::Bool(*value), &mut params);
                format!("{} = ${n}::bool", bool_column(*field))
            }
            Condition::RegionIsDefault => "r.is_default".to_string(),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        ("TRUE".to_string(), params)
    } else {
        (parts.join(" AND "), params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::protofilter::parse;
    use proptest::prelude::*;

    /// Every piece of SQL `filter_sql` may emit; anything else in its output came from input.
    fn strip_known(sql: &str) -> String {
        let mut s = sql.to_string();
        let fragments: Vec<&str> = [
            NumField::Cpu,
            NumField::Mem,
            NumField::Disk,
            NumField::Bandwidth,
            NumField::Gpumem,
            NumField::Eviction,
            NumField::Cost,
            NumField::FlavorId,
            NumField::ProviderId,
            NumField::RegionId,
        ]
        .map(num_column)
        .into_iter()
        .chain(
            [
                TextField::Provider,
                TextField::Region,
                TextField::Flavor,
                TextField::Gpu,
            ]
            .map(text_column),
        )
        .chain([BoolField::HasGpu, BoolField::HasQuickDisks].map(bool_column))
        .chain(["r.is_default", "TRUE"])
        .collect();
        // Longest first, so a fragment that contains another is removed whole.
        let mut fragments = fragments;
        fragments.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for f in fragments {
            s = s.replace(f, " ");
        }
        for t in [
            "::float8", "::text", "::bool", " AND ", "LIKE", ">=", "<=", ">", "<", "=",
        ] {
            s = s.replace(t, " ");
        }
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' {
                while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                }
            } else if !c.is_whitespace() {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn compiles_to_fixed_fragments_and_parameters() {
        let f =
            parse("cpu>=8:provider=azure.primary:region~%eu%:has_gpu:region is default").unwrap();
        let (sql, params) = filter_sql(&f, 2);
        assert_eq!(
            sql,
            "f.cpu::float8 >= $2::float8 AND (p.provider_name || '.' || p.config_name) = $3::text \
             AND r.region_name LIKE $4::text AND f.has_gpu = $5::bool AND r.is_default"
        );
        assert_eq!(
            params,
            vec![
                Param::F64(8.0),
                Param::Text("azure.primary".into()),
                Param::Text("%eu%".into()),
                Param::Bool(true)
            ]
        );
        assert_eq!(filter_sql(&Filter::default(), 2).0, "TRUE");
        assert_eq!(strip_known(&sql), "");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the input, the SQL holds only whitelisted fragments and parameter markers, and
        /// one parameter per value.
        #[test]
        fn no_sql_text_comes_from_input(
            s in "([a-z_]{1,16}[ ]?(>=|<=|==|>|<|=|~| is )[ ]?[-a-z0-9.%_'\";()*\\\\/]{1,16}:?){0,8}"
        ) {
            if let Ok(f) = parse(&s) {
                let (sql, params) = filter_sql(&f, 2);
                prop_assert_eq!(strip_known(&sql), "", "{}", sql);
                prop_assert_eq!(sql.matches('$').count(), params.len());
            }
        }

        #[test]
        fn arbitrary_text_never_leaks(s in "\\PC{0,200}") {
            if let Ok(f) = parse(&s) {
                let (sql, _) = filter_sql(&f, 1);
                prop_assert_eq!(strip_known(&sql), "");
            }
        }
    }
}
