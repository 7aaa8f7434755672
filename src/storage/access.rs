//! The I/O half of `domain::fetch_policy`: making a local path canonical before it is checked
//! (the longest existing ancestor resolved by the kernel, so symbolic links and `..` cannot lead
//! out of a root), and an HTTP client that connects only to addresses the policy allows. Its
//! resolver checks every address a name resolves to and hands the client only those (a name
//! that resolves differently the second time — DNS rebinding — gains nothing: there is no second
//! time), IP literals are checked before the request, redirects are checked like the first
//! location, and proxies from the environment are ignored (a proxy would connect for us).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::domain::fetch_policy::{FetchPolicy, Host};

/// Redirects followed at most (each checked like the first location).
const MAX_REDIRECTS: usize = 5;

/// `path` (absolute) with symbolic links and `..` resolved as far as it exists; the part that
/// does not exist yet is appended as written (it holds no `..`: locations refuse it).
pub async fn canonical(path: PathBuf) -> std::io::Result<PathBuf> {
    tokio::task::spawn_blocking(move || canonical_blocking(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn canonical_blocking(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut c) => {
                for part in rest.iter().rev() {
                    if part == ".." {
                        return Err(std::io::Error::other("'..' below a missing folder"));
                    }
                    c.push(part);
                }
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(e);
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Roots and denied folders made canonical once, at start (a root that does not exist is kept
/// as written: nothing below it can be reached until it exists, and then it matches).
pub fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .filter(|r| !r.as_os_str().is_empty())
        .map(|r| {
            let absolute = if r.is_absolute() {
                r.clone()
            } else {
                std::env::current_dir().unwrap_or_default().join(r)
            };
            canonical_blocking(&absolute).unwrap_or(absolute)
        })
        .collect()
}

/// The host of `endpoint` (`scheme://authority`) as the URL parser reads it, so that forms such
/// as `2130706433` or `0x7f.1` are seen as the IPv4 addresses a client would connect to.
pub fn endpoint_host(endpoint: &str) -> Result<(String, Option<IpAddr>), String> {
    let url = reqwest::Url::parse(&format!("{endpoint}/")).map_err(|e| e.to_string())?;
    match url.host() {
        Some(url::Host::Domain(d)) => Ok((d.to_string(), None)),
        Some(url::Host::Ipv4(ip)) => Ok((ip.to_string(), Some(IpAddr::V4(ip)))),
        Some(url::Host::Ipv6(ip)) => Ok((ip.to_string(), Some(IpAddr::V6(ip)))),
        None => Err("missing host".into()),
    }
}

/// Checks a host (name or literal) against the policy.
pub fn check_host(policy: &FetchPolicy, host: &str, ip: Option<IpAddr>) -> Result<(), String> {
    let h = match ip {
        Some(ip) => Host::Ip(ip),
        None => Host::Name(host),
    };
    policy.check_host(h).map_err(|d| d.0)
}

/// Whether `host` resolves to at least one address the policy allows.
pub async fn check_resolved(policy: &FetchPolicy, host: &str) -> Result<(), String> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut refusal = format!("{host} has no address");
    for a in found {
        match policy.check_ip(a.ip()) {
            Ok(()) => return Ok(()),
            Err(d) => refusal = d.0,
        }
    }
    Err(refusal)
}

/// Resolves names, keeping only the addresses the policy allows.
struct CheckedResolver {
    policy: Arc<FetchPolicy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(d) => {
                        refusal = Some(d.0);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// An HTTP client for opendal that reaches only what `policy` allows.
pub fn checked_client(policy: Arc<FetchPolicy>) -> Result<reqwest::Client, String> {
    let redirect_policy = policy.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let url = attempt.url();
        let checked = match url.host() {
            Some(url::Host::Domain(d)) => check_host(&redirect_policy, d, None),
            Some(url::Host::Ipv4(ip)) => check_host(&redirect_policy, "", Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => check_host(&redirect_policy, "", Some(IpAddr::V6(ip))),
            None => Err("redirect without a host".into()),
        };
        match checked {
            Ok(()) if matches!(url.scheme(), "http" | "https") => attempt.follow(),
            Ok(()) => attempt.error("redirect to a scheme other than http(s)"),
            Err(why) => attempt.error(format!("redirect refused: {why}")),
        }
    });
    reqwest::Client::builder()
        .dns_resolver(Arc::new(CheckedResolver { policy }))
        .redirect(redirects)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn canonical_resolves_links_and_keeps_missing_tails() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/out")).unwrap();
        assert_eq!(
            canonical(root.join("a/b/missing/x")).await.unwrap(),
            root.join("a/b/missing/x")
        );
        assert_eq!(
            canonical(root.join("a/out/passwd")).await.unwrap(),
            std::fs::canonicalize("/etc/passwd").unwrap()
        );
        assert_eq!(
            canonical(root.join("a/out/nothing-here")).await.unwrap(),
            std::fs::canonicalize("/etc").unwrap().join("nothing-here")
        );
    }

    #[test]
    fn hosts_as_a_client_reads_them() {
        assert_eq!(
            endpoint_host("http://2130706433").unwrap().1,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            endpoint_host("http://0x7f.1:8080").unwrap().1,
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            endpoint_host("https://[::ffff:a9fe:a9fe]").unwrap().1,
            Some("::ffff:169.254.169.254".parse().unwrap())
        );
        assert_eq!(
            endpoint_host("https://user@Example.ORG:443").unwrap(),
            ("example.org".to_string(), None)
        );
    }
}
