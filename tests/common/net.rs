//! Loopback plumbing: free ports for child processes, a minimal HTTP GET (for /metrics), and
//! reading a sample of Prometheus text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// A minimal HTTP/1.1 GET on loopback (for /metrics).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

const LOW: u32 = 10_000;
const SPAN: u32 = 22_000; // 10_000..32_000
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// Takes `n` consecutive ports from this process' cursor (seeded by the pid on first use); they
/// are never handed out again. Returns the first, as an offset from `LOW`.
fn take_ports(n: u32) -> u32 {
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    CURSOR.fetch_add(n, Ordering::SeqCst) % SPAN
}

fn bindable(port: u32) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok()
}

/// A free loopback port for a child process we start right after.
///
/// Picked below the kernel's ephemeral range (32768–60999 on Linux): a port asked from the kernel
/// with `bind(0)` is released before the child binds it, and in that window any outgoing
/// connection (to etcd, to a replica) may be given the same port as its local end — which made
/// "Address already in use" flakes. Below the range only other listeners compete, and those are
/// ours: a per-process cursor (seeded by the pid, so concurrent test binaries start apart) never
/// hands out the same port twice, and a bind check skips ports someone holds.
pub fn free_port() -> u16 {
    for _ in 0..SPAN {
        let port = LOW + take_ports(1);
        if bindable(port) {
            return port as u16;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// A base port such that `base + o` is free for every `o` in `offsets`, for a script that binds
/// ports at fixed offsets (deploy/local/up.sh). The whole block up to the largest offset comes
/// from the same cursor as [`free_port`], so no other test of this process is handed one of them.
pub fn free_port_base(offsets: &[u16]) -> u16 {
    let len = u32::from(offsets.iter().copied().max().unwrap_or(0)) + 1;
    for _ in 0..SPAN / len {
        let start = take_ports(len);
        if start + len <= SPAN
            && offsets
                .iter()
                .all(|&o| bindable(LOW + start + u32::from(o)))
        {
            return (LOW + start) as u16;
        }
    }
    panic!("no free block of {len} loopback ports below the ephemeral range");
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Like `http_get`, but `None` when the connection fails.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Some(
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(text),
    )
}
