//! The glob of a location, matched the way the original matches it: the original filters an rclone
//! recursive listing with the filter rules `+ <glob>` then `- *`, so a path is listed when the
//! glob's rclone rule matches it. Facts of those rules (rclone's filter documentation and its
//! glob-to-regexp translation), reproduced here as one compiled regex (the `regex` crate: linear
//! time in the path, whatever the glob):
//! - a glob without a leading `/` matches the END of the path (the regex `(^|/)<glob>$`); one with
//!   a leading `/` is anchored at the root (`^<glob>$`). Paths are relative to the listed root;
//! - `*` is `[^/]*`, `**` is `.*` (so `**/x` needs a `/` before `x`), three stars are an error;
//! - `?` is `[^/]`; `[…]` is one character of a class (`a-z` ranges, `^` negates, and a negated
//!   class may match `/`, as rclone hands classes to the regex engine unchanged; `!` is literal);
//! - `{a,b}` are alternatives (not nested; they may hold wildcards and `/`); `,` outside braces
//!   and every other character are literal; `\` makes the next character literal.
//!
//! Where we are stricter: POSIX classes and `[` inside a class, an empty class, and rclone's newer
//! `{{regexp}}` are refused; a glob longer than [`MAX_GLOB_LEN`] or with more than
//! [`MAX_GLOB_WILDCARDS`] wildcards or [`MAX_GLOB_ALTERNATIVES`] alternatives is refused, so no
//! request can make the matcher large.

use std::fmt::Write as _;

/// Longest glob accepted, in bytes.
pub const MAX_GLOB_LEN: usize = 4096;
/// Most wildcards (`*` or `**` runs, `?`, classes) in one glob.
pub const MAX_GLOB_WILDCARDS: usize = 64;
/// Most `{…}` alternatives, summed over the glob's brace groups.
pub const MAX_GLOB_ALTERNATIVES: usize = 64;
/// Ceiling of the compiled regex; the limits above keep real globs far below it.
const MAX_REGEX_BYTES: usize = 4 << 20;

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    regex: regex::Regex,
}

impl Glob {
    /// Compiles `glob`; the error is the reason it is refused, for an InvalidArgument.
    pub fn new(glob: &str) -> Result<Glob, String> {
        let pattern = to_regex(glob)?;
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(MAX_REGEX_BYTES)
            .dfa_size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| format!("bad glob: {e}"))?;
        Ok(Glob { regex })
    }

    /// Whether `path` (relative to the listed root, no leading or trailing `/`) is matched.
    pub fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

/// The regex of `glob` under the rules of the module doc.
fn to_regex(glob: &str) -> Result<String, String> {
    if glob.len() > MAX_GLOB_LEN {
        return Err(format!(
            "glob of {} bytes (at most {MAX_GLOB_LEN})",
            glob.len()
        ));
    }
    let mut re = String::with_capacity(glob.len() * 2 + 16);
    let body = match glob.strip_prefix('/') {
        Some(anchored) => {
            re.push('^');
            anchored
        }
        None => {
            re.push_str("(?:^|/)");
            glob
        }
    };
    let mut wildcards = 0usize;
    let mut alternatives = 0usize;
    let mut in_braces = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                let mut stars = 1;
                while chars.next_if_eq(&'*').is_some() {
                    stars += 1;
                }
                re.push_str(match stars {
                    1 => "[^/]*",
                    2 => ".*",
                    _ => return Err(format!("too many stars in {glob:?} (at most `**`)")),
                });
                wildcards += 1;
            }
            '?' => {
                re.push_str("[^/]");
                wildcards += 1;
            }
            '[' => {
                class(&mut chars, &mut re).map_err(|why| format!("{why} in {glob:?}"))?;
                wildcards += 1;
            }
            ']' => return Err(format!("unmatched ']' in {glob:?}")),
            '{' if in_braces => return Err(format!("nested '{{' in {glob:?}")),
            '{' => {
                in_braces = true;
                alternatives += 1;
                re.push_str("(?:");
            }
            '}' if in_braces => {
                in_braces = false;
                re.push(')');
            }
            '}' => return Err(format!("unmatched '}}' in {glob:?}")),
            ',' if in_braces => {
                alternatives += 1;
                re.push('|');
            }
            '\\' => match chars.next() {
                Some(escaped) => literal(&mut re, escaped),
                None => return Err(format!("trailing '\\' in {glob:?}")),
            },
            c => literal(&mut re, c),
        }
        if wildcards > MAX_GLOB_WILDCARDS {
            return Err(format!(
                "more than {MAX_GLOB_WILDCARDS} wildcards in the glob"
            ));
        }
        if alternatives > MAX_GLOB_ALTERNATIVES {
            return Err(format!(
                "more than {MAX_GLOB_ALTERNATIVES} alternatives in the glob"
            ));
        }
    }
    if in_braces {
        return Err(format!("unclosed '{{' in {glob:?}"));
    }
    re.push('$');
    Ok(re)
}

/// A `[…]` class, the `[` already read: single characters (`\` escapes one), `a-z` ranges, a
/// leading `^` negating; `-` first or last is literal.
fn class(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    re: &mut String,
) -> Result<(), String> {
    re.push('[');
    if chars.next_if_eq(&'^').is_some() {
        re.push('^');
    }
    let mut items = 0;
    loop {
        let c = match chars.next() {
            None => return Err("unclosed '['".into()),
            Some(']') if items == 0 => return Err("empty class '[]'".into()),
            Some(']') => break,
            Some('[') => return Err("'[' inside a class (POSIX classes are not supported)".into()),
            Some('\\') => chars.next().ok_or("unclosed '['")?,
            Some(c) => c,
        };
        items += 1;
        let is_range = chars.peek() == Some(&'-') && {
            let mut ahead = chars.clone();
            ahead.next();
            !matches!(ahead.peek(), None | Some(']'))
        };
        if is_range {
            chars.next();
            let end = match chars.next() {
                Some('\\') => chars.next().ok_or("unclosed '['")?,
                Some('[') => return Err("'[' inside a class".into()),
                Some(e) => e,
                None => return Err("unclosed '['".into()),
            };
            if end < c {
                return Err(format!("reversed range '{c}-{end}'"));
            }
            class_char(re, c);
            re.push('-');
            class_char(re, end);
        } else {
            class_char(re, c);
        }
    }
    re.push(']');
    Ok(())
}

fn literal(re: &mut String, c: char) {
    let mut buf = [0u8; 4];
    re.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// One character inside a regex class, escaped when the class syntax could read it otherwise.
fn class_char(re: &mut String, c: char) {
    if c.is_ascii_alphanumeric() || !c.is_ascii() {
        re.push(c);
    } else {
        let _ = write!(re, "\\x{{{:x}}}", c as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, path: &str) -> bool {
        Glob::new(glob).unwrap().is_match(path)
    }

    #[test]
    fn unanchored_globs_match_the_end_of_the_path() {
        assert!(m("*.fastq.gz", "a.fastq.gz"));
        assert!(m("*.fastq.gz", "s1/a.fastq.gz"));
        assert!(m("*.fastq.gz", "s1/deep/a.fastq.gz"));
        assert!(!m("*.fastq.gz", "a.fastq.gz/x"));
        assert!(m("x", "x") && m("x", "d/x") && !m("x", "dx") && !m("x", "x/y"));
        // The end starts at a segment: `*/x` is "a segment then x" anywhere.
        assert!(m("*/x", "d/x") && m("*/x", "e/d/x") && !m("*/x", "x"));
        assert!(m("run*/x", "a/run1/x") && !m("run*/x", "a/xrun1/x"));
    }

    #[test]
    fn a_leading_slash_anchors_at_the_root() {
        assert!(m("/x", "x"));
        assert!(!m("/x", "d/x"));
        assert!(m("/*.fq", "a.fq") && !m("/*.fq", "d/a.fq"));
        assert!(m("/*/x", "d/x") && !m("/*/x", "e/d/x"));
        assert!(m("/**.fq", "e/d/a.fq"));
    }

    #[test]
    fn stars_questions_classes_and_alternatives() {
        assert!(m("**.x", "a.x") && m("**.x", "a/b/c.x") && m("**.x", "a.b/.x"));
        assert!(m("**/x", "a/x") && !m("**/x", "x"), "** then / needs a '/'");
        assert!(m("*.f*q.gz", "s.fq.gz") && m("*.f*q.gz", "d/s.fastq.gz"));
        assert!(!m("*.f*q.gz", "s.f/q.gz"), "* stays in a segment");
        assert!(m("a?c", "abc") && !m("a?c", "a/c") && !m("a?c", "ac"));
        assert!(m("[ab].x", "b.x") && !m("[ab].x", "c.x"));
        assert!(m("[a-c]", "b") && !m("[a-c]", "d") && m("[!a]", "!"));
        assert!(m("[^a]", "b") && !m("[^a]", "a"));
        assert!(
            m("a[^b]c", "a/c"),
            "rclone hands classes to the regex: a negated one matches '/'"
        );
        assert!(m("[-a]", "-") && m("[a-]", "-") && m("[.]", ".") && !m("[.]", "a"));
        assert!(m("{a,b}.x", "a.x") && m("{a,b}.x", "d/b.x") && !m("{a,b}.x", "c.x"));
        assert!(m("{a/*,b}", "a/z") && m("{,a}x", "x") && m("{,a}x", "ax"));
        assert!(m("a,b", "a,b"), "',' outside braces is literal");
        assert!(m(r"\*", "*") && !m(r"\*", "a") && m(r"a\{b", "a{b"));
        assert!(
            m("a.b+(c)|^$", "a.b+(c)|^$"),
            "regex characters are literal"
        );
        assert!(!m("a.b", "axb"));
        assert!(m("é?", "éü"));
    }

    #[test]
    fn malformed_globs_are_refused() {
        for bad in [
            "***",
            "a[",
            "a]",
            "[]",
            "[z-a]",
            "{a",
            "a}",
            "{a,{b}}",
            "x\\",
            "[[:alpha:]]",
            "{{re}}",
        ] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn large_globs_are_refused_not_compiled() {
        let long = "a".repeat(MAX_GLOB_LEN + 1);
        assert!(Glob::new(&long).unwrap_err().contains("bytes"));
        let stars = "*a".repeat(MAX_GLOB_WILDCARDS + 1);
        assert!(Glob::new(&stars).unwrap_err().contains("wildcards"));
        let alts = format!("{{{}}}", vec!["a"; MAX_GLOB_ALTERNATIVES + 1].join(","));
        assert!(Glob::new(&alts).unwrap_err().contains("alternatives"));
        // At the limits, the worst mix still compiles (no panic, within the regex ceiling).
        let classes = "[^a]".repeat(MAX_GLOB_WILDCARDS);
        assert!(Glob::new(&classes).is_ok());
        let worst = format!(
            "{}{{{}}}{}",
            "**?".repeat(MAX_GLOB_WILDCARDS / 2),
            vec!["é"; MAX_GLOB_ALTERNATIVES].join(","),
            "é".repeat(1000)
        );
        assert!(worst.len() <= MAX_GLOB_LEN);
        let g = Glob::new(&worst).unwrap();
        assert!(!g.is_match(&"é/".repeat(10_000)));
    }
}
