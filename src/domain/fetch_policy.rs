//! Where a storage location may lead: the rule behind FetchList/FetchInfo on the server and behind
//! a worker's local inputs and outputs. Local paths only below configured roots (compared after
//! the caller resolved symbolic links and `..`), never inside a denied folder (the server's data
//! dir, the worker's store); web addresses only to allow-listed hosts, and never to an internal
//! address (loopback, link-local, private, shared, unspecified, multicast, broadcast) unless
//! internal addresses are allowed. The caller checks every address a name resolves to, and
//! connects only to addresses that passed. Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The rule, with the names of the options that change it (for messages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Folders below which local paths are allowed (canonical); empty: no local path.
    pub local_roots: Vec<PathBuf>,
    /// Folders never reached even below a root (canonical).
    pub denied: Vec<PathBuf>,
    /// Hosts allowed for http(s): exact names or IP literals, or `*.domain` for any name below
    /// `domain`; compared lowercased, without a trailing dot. Empty: no web location.
    pub http_hosts: Vec<String>,
    /// Allow internal addresses (loopback, private, link-local, …) for allow-listed hosts.
    pub allow_private: bool,
    /// Web locations are not checked at all (a worker: its tasks can reach the network anyway).
    pub any_http: bool,
    /// The option naming the local roots (`--fetch-roots` on the server, `--local-roots` on a
    /// worker), and the one naming the web hosts, for messages.
    pub roots_option: &'static str,
    pub hosts_option: &'static str,
    pub private_option: &'static str,
}

/// A host of a web location, as the URL parser read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// Why a location is refused; the message names the option to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl FetchPolicy {
    /// A policy refusing everything, with the server's option names.
    pub fn server() -> FetchPolicy {
        FetchPolicy {
            roots_option: "--fetch-roots",
            hosts_option: "--fetch-http-hosts",
            private_option: "--fetch-allow-private",
            ..FetchPolicy::default()
        }
    }

    /// A worker's policy: local paths as configured, web locations unchecked (a task can reach
    /// the network itself, so checking its downloads would protect nothing).
    pub fn worker() -> FetchPolicy {
        FetchPolicy {
            roots_option: "--local-roots",
            any_http: true,
            ..FetchPolicy::default()
        }
    }

    /// Checks a local path, already made canonical (symbolic links resolved, no `..`).
    pub fn check_local(&self, canonical: &Path) -> Result<(), Denied> {
        if let Some(d) = self.denied.iter().find(|d| canonical.starts_with(d)) {
            return Err(Denied(format!(
                "local path inside {} is never reachable",
                d.display()
            )));
        }
        if self.local_roots.iter().any(|r| canonical.starts_with(r)) {
            return Ok(());
        }
        if self.local_roots.is_empty() {
            Err(Denied(format!(
                "local paths are not reachable: no {} configured",
                self.roots_option
            )))
        } else {
            Err(Denied(format!(
                "local path outside the configured roots (after resolving links); add its \
                 folder to {}",
                self.roots_option
            )))
        }
    }

    /// Checks a web host (before resolving it).
    pub fn check_host(&self, host: Host<'_>) -> Result<(), Denied> {
        if self.any_http {
            return Ok(());
        }
        let name = match host {
            Host::Name(n) => n.trim_end_matches('.').to_ascii_lowercase(),
            Host::Ip(ip) => ip.to_string(),
        };
        let listed = self.http_hosts.iter().any(|h| {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let h = h.trim_start_matches('[').trim_end_matches(']');
            match h.strip_prefix("*.") {
                Some(domain) => name.len() > domain.len() && name.ends_with(&format!(".{domain}")),
                None => h == name,
            }
        });
        if !listed {
            return Err(Denied(if self.http_hosts.is_empty() {
                format!(
                    "web locations are not reachable: no {} configured",
                    self.hosts_option
                )
            } else {
                format!("host {} is not in {}", clip(&name), self.hosts_option)
            }));
        }
        if let Host::Ip(ip) = host {
            self.check_ip(ip)?;
        }
        Ok(())
    }

    /// Checks an address a host resolved to (or an IP literal).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        if !self.any_http && !self.allow_private && is_internal(ip) {
            return Err(Denied(format!(
                "address {ip} is internal (loopback, private, link-local or similar); set {} to \
                 reach it",
                self.private_option
            )));
        }
        Ok(())
    }
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `ip` is an address a request from a user must not reach without the operator's
/// leave: loopback, unspecified, link-local (169.254/16, fe80::/10, cloud metadata services),
/// private (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), `0/8`, multicast,
/// broadcast, and IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64) when they are.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_private()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) addresses carry an IPv4 one.
    let embedded = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_internal_v4(embedded);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(embedded);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xffc0) == 0xfe80
        || (seg[0] & 0xfe00) == 0xfc00
        // Site-local (deprecated, still routed internally by some networks).
        || (seg[0] & 0xffc0) == 0xfec0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> FetchPolicy {
        FetchPolicy {
            local_roots: vec!["/data".into(), "/srv/share".into()],
            denied: vec!["/data/taskqueue".into()],
            http_hosts: vec![
                "example.org".into(),
                "*.mirror.example".into(),
                "10.0.0.5".into(),
            ],
            ..FetchPolicy::server()
        }
    }

    #[test]
    fn local_paths_below_roots_only() {
        let p = policy();
        assert!(p.check_local(Path::new("/data")).is_ok());
        assert!(p.check_local(Path::new("/data/run1/a.fq")).is_ok());
        assert!(p.check_local(Path::new("/srv/share/x")).is_ok());
        for bad in [
            "/etc/passwd",
            "/",
            "/database",
            "/srv",
            "/proc/self/environ",
        ] {
            let e = p.check_local(Path::new(bad)).unwrap_err();
            assert!(e.0.contains("--fetch-roots"), "{bad}: {e}");
        }
        assert!(p.check_local(Path::new("/data/taskqueue/pg")).is_err());
        let none = FetchPolicy::worker();
        let e = none.check_local(Path::new("/data")).unwrap_err();
        assert!(e.0.contains("--local-roots"), "{e}");
    }

    #[test]
    fn hosts_on_the_list_only() {
        let p = policy();
        assert!(p.check_host(Host::Name("example.org")).is_ok());
        assert!(p.check_host(Host::Name("EXAMPLE.org.")).is_ok());
        assert!(p.check_host(Host::Name("a.mirror.example")).is_ok());
        assert!(p.check_host(Host::Name("mirror.example")).is_err());
        assert!(p.check_host(Host::Name("evilexample.org")).is_err());
        assert!(p.check_host(Host::Name("example.org.evil")).is_err());
        // Listed, but internal: refused unless allowed.
        let e = p.check_host(Host::Ip(ip("10.0.0.5"))).unwrap_err();
        assert!(e.0.contains("--fetch-allow-private"), "{e}");
        let open = FetchPolicy {
            allow_private: true,
            ..policy()
        };
        assert!(open.check_host(Host::Ip(ip("10.0.0.5"))).is_ok());
        let e = FetchPolicy::server()
            .check_host(Host::Name("example.org"))
            .unwrap_err();
        assert!(e.0.contains("--fetch-http-hosts"), "{e}");
    }

    #[test]
    fn internal_addresses() {
        for s in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fec0::1",
        ] {
            assert!(is_internal(ip(s)), "{s}");
        }
        for s in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_internal(ip(s)), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,60}", a: u32, b: u128) {
            let p = policy();
            let _ = p.check_host(Host::Name(&s));
            let _ = p.check_local(Path::new(&s));
            let _ = is_internal(IpAddr::V4(Ipv4Addr::from(a)));
            let _ = is_internal(IpAddr::V6(Ipv6Addr::from(b)));
        }
    }
}
