//! Parsing a location (a local path, `file://…`, `http(s)://…` or `<remote>://bucket/path` naming a
//! remote of the `rclone:` config) into the backend that serves it, the path inside that backend,
//! and the glob part when the path has one. Pure: no I/O except resolving a relative local path.

use super::Error;

/// Which backend serves a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The local filesystem (bare paths and `file://`), rooted at `/`.
    Local,
    /// A web server: list is not possible, stat and download are.
    Http { endpoint: String },
    /// A remote of the `rclone:` config, by name.
    Remote { name: String },
}

/// A parsed location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub backend: Backend,
    /// The bucket or container of an object-store remote; empty otherwise.
    pub bucket: String,
    /// Path inside the backend root, without a leading `/`; a directory ends with `/`. When the
    /// location has a glob this is the fixed part before the first glob segment (a directory).
    pub path: String,
    /// The glob below `path` (rclone's filter rules: see `glob`), if any.
    pub glob: Option<String>,
    /// What goes before `path` to print an entry back as a location of the same form.
    pub prefix: String,
}

impl Location {
    /// Parses `uri`. `is_bucketed(remote)` tells whether a named remote has buckets (object stores)
    /// or is a plain tree (http, local).
    pub fn parse(uri: &str, is_bucketed: impl Fn(&str) -> bool) -> Result<Location, Error> {
        let invalid = |reason: &str| Error::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = uri.trim();
        if trimmed.is_empty() {
            return Err(invalid("empty location"));
        }
        let (backend, bucket, raw_path, prefix) = match trimmed.split_once("://") {
            None => {
                let absolute = absolute_local(trimmed).map_err(|e| invalid(&e))?;
                (Backend::Local, String::new(), absolute, "/".to_string())
            }
            Some((scheme, rest)) => {
                let scheme_lc = scheme.to_ascii_lowercase();
                if scheme.is_empty()
                    || !scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(invalid(
                        "the scheme must be a remote name or file/http/https",
                    ));
                }
                match scheme_lc.as_str() {
                    "file" => {
                        let absolute = absolute_local(rest).map_err(|e| invalid(&e))?;
                        (Backend::Local, String::new(), absolute, "file:///".into())
                    }
                    "http" | "https" => {
                        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                        if host.is_empty() {
                            return Err(invalid("missing host"));
                        }
                        let endpoint = format!("{scheme_lc}://{host}");
                        let prefix = format!("{endpoint}/");
                        (
                            Backend::Http { endpoint },
                            String::new(),
                            path.into(),
                            prefix,
                        )
                    }
                    _ if is_bucketed(scheme) => {
                        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                        if bucket.is_empty() {
                            return Err(invalid("missing bucket (expected remote://bucket/path)"));
                        }
                        let prefix = format!("{scheme}://{bucket}/");
                        let backend = Backend::Remote {
                            name: scheme.to_string(),
                        };
                        (backend, bucket.to_string(), path.into(), prefix)
                    }
                    _ => {
                        let prefix = format!("{scheme}://");
                        let backend = Backend::Remote {
                            name: scheme.to_string(),
                        };
                        (backend, String::new(), rest.to_string(), prefix)
                    }
                }
            }
        };
        let path = normalize(&raw_path).map_err(|e| invalid(&e))?;
        let (path, glob) = split_glob(&path);
        Ok(Location {
            backend,
            bucket,
            path,
            glob,
            prefix,
        })
    }

    /// The location of `path` (a path of the same backend) in the form this one was given.
    pub fn display(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    /// The last segment of the path (for a directory, without its trailing `/`).
    pub fn file_name(&self) -> &str {
        self.path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
    }
}

/// A local path made absolute (relative paths are taken from the current directory), without the
/// leading `/` (the local backend is rooted at `/`).
fn absolute_local(raw: &str) -> Result<String, String> {
    let path = if raw.starts_with('/') {
        raw.to_string()
    } else {
        let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
        let mut joined = cwd.to_string_lossy().to_string();
        if !joined.ends_with('/') {
            joined.push('/');
        }
        joined.push_str(raw);
        joined
    };
    Ok(path.trim_start_matches('/').to_string())
}

/// Collapses `//` and `.` segments; refuses `..` (a location never climbs above its root).
fn normalize(path: &str) -> Result<String, String> {
    let trailing = path.ends_with('/') || path.ends_with("/.");
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("'..' is not allowed in a location".into()),
            s => out.push(s),
        }
    }
    let mut joined = out.join("/");
    if trailing && !joined.is_empty() {
        joined.push('/');
    }
    Ok(joined)
}

/// A segment holding `*`, `?` or `[` starts the glob, as in the original's split of a location
/// (`{` alone does not).
fn has_glob(segment: &str) -> bool {
    segment.contains(['*', '?', '['])
}

/// Splits at the first segment holding a glob character: (fixed directory, glob below it).
fn split_glob(path: &str) -> (String, Option<String>) {
    let segments: Vec<&str> = path.split('/').collect();
    match segments.iter().position(|s| has_glob(s)) {
        None => (path.to_string(), None),
        Some(i) => {
            let mut base = segments[..i].join("/");
            if !base.is_empty() {
                base.push('/');
            }
            (base, Some(segments[i..].join("/")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Location {
        Location::parse(uri, |name| name == "s3" || name == "azswed").unwrap()
    }

    #[test]
    fn local_paths_and_file_uris() {
        let l = parse("/data/x/a.txt");
        assert_eq!(l.backend, Backend::Local);
        assert_eq!(l.path, "data/x/a.txt");
        assert_eq!(l.display(&l.path), "/data/x/a.txt");
        let f = parse("file:///data/x/");
        assert_eq!(f.path, "data/x/");
        assert_eq!(f.display("data/x/b"), "file:///data/x/b");
        let rel = parse("rel/dir/");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            format!("/{}", rel.path),
            format!("{}/rel/dir/", cwd.display())
        );
    }

    #[test]
    fn remotes_with_and_without_buckets() {
        let s = parse("s3://bucket/some/key.fq.gz");
        assert_eq!(s.backend, Backend::Remote { name: "s3".into() });
        assert_eq!(
            (s.bucket.as_str(), s.path.as_str()),
            ("bucket", "some/key.fq.gz")
        );
        assert_eq!(s.display("k"), "s3://bucket/k");
        assert_eq!(s.file_name(), "key.fq.gz");
        let web = parse("myhttp://dir/file");
        assert_eq!(web.bucket, "");
        assert_eq!(web.path, "dir/file");
        let h = parse("https://example.org/a/b.txt");
        assert_eq!(
            h.backend,
            Backend::Http {
                endpoint: "https://example.org".into()
            }
        );
        assert_eq!(h.path, "a/b.txt");
    }

    #[test]
    fn globs_split_at_the_first_glob_segment() {
        let g = parse("s3://b/data/run*/**/*.fq");
        assert_eq!(g.path, "data/");
        assert_eq!(g.glob.as_deref(), Some("run*/**/*.fq"));
        let top = parse("/data/*.fq");
        assert_eq!(
            (top.path.as_str(), top.glob.as_deref()),
            ("data/", Some("*.fq"))
        );
        // `{` alone does not start a glob (the original splits at `*`, `?` or `[`).
        let braces = parse("/data/{a,b}/x*.fq");
        assert_eq!(braces.path, "data/{a,b}/");
    }

    #[test]
    fn bad_locations_are_refused() {
        let known = |n: &str| n == "s3";
        for bad in [
            "",
            "  ",
            "s3://",
            "s3:///key",
            "/a/../b",
            "ht tp://x",
            "http:///path",
        ] {
            assert!(Location::parse(bad, known).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalizes_redundant_separators() {
        assert_eq!(parse("/a//b/./c/").path, "a/b/c/");
        assert_eq!(parse("s3://b//k").path, "k");
    }
}
