//! The login gate: Login and ChangePassword are the only RPCs without a token, and each one costs a
//! password hash (argon2id: ~19 MiB and a core for tens of milliseconds). The gate keeps a flood of
//! them from taking the server's memory and CPU:
//! - credentials longer than [`MAX_CREDENTIAL_BYTES`] are refused before anything else;
//! - at most `--login-concurrency` hashes run at once (a semaphore; the permit travels with the
//!   blocking hash, so a dropped request does not free its slot early), and at most `--login-queue`
//!   more wait for one; beyond, RESOURCE_EXHAUSTED. Attempts from one peer address take at most
//!   all slots but one at once (one with a single slot), so a flood from one address leaves a slot
//!   to logins from others and they do not wait behind its queue;
//! - the 19 MiB of each hash goes back to the operating system when the hash is done (glibc keeps
//!   freed blocks of that size in per-thread arenas otherwise, which is how a flood grew the server
//!   by gigabytes);
//! - after [`USER_FAILURES_BEFORE_BACKOFF`] failures for one username or
//!   [`PEER_FAILURES_BEFORE_BACKOFF`] from one peer address, further attempts are refused without
//!   hashing for a back-off that doubles with each further failure, from [`FIRST_BACKOFF`] to
//!   [`MAX_BACKOFF`]. The back-off is checked again when a waiting attempt gets its hashing slot,
//!   so a burst admitted just before the first failure is refused rather than hashed. A success clears the username's record; a record is forgotten
//!   [`FORGET_AFTER`] after its last failure. The table holds at most [`MAX_TRACKED`] records
//!   (usernames are kept as keyed hashes, a few dozen bytes each), so its memory is bounded too.
//!
//! It does not decide whether a password is right (`domain::credentials` does) and keeps no state
//! across replicas: each replica throttles what reaches it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Code, Error, Result};
use crate::telemetry::metrics as m;

/// Longest username or password accepted (bytes): real ones are far shorter, and a hash of a
/// megabyte-long password is work an attacker should not get for free.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;
/// Failures for one username before its attempts are slowed down.
pub const USER_FAILURES_BEFORE_BACKOFF: u32 = 5;
/// Failures from one peer address before its attempts are slowed down (higher: several people may
/// share an address).
pub const PEER_FAILURES_BEFORE_BACKOFF: u32 = 20;
/// The first back-off; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A record without a new failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most usernames and addresses tracked at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A username, as a keyed hash: the table never holds attacker-chosen strings.
    User(u64),
    Peer(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

type PeerSlots = Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>;

/// The replica's login gate (one per replica, shared by its handlers).
pub struct LoginGate {
    hashing: Arc<Semaphore>,
    /// Hashing slots per peer address with an attempt in progress (entries leave with the last).
    peers: PeerSlots,
    per_peer: usize,
    /// Hashing slots plus waiting places: what may be between admission and the end of a hash.
    admitted: Arc<Semaphore>,
    records: Arc<Mutex<HashMap<Key, Record>>>,
    hasher: RandomState,
}

/// A login let through the gate; holds its place until dropped.
pub struct Admission {
    _place: OwnedSemaphorePermit,
    hashing: Arc<Semaphore>,
    peers: PeerSlots,
    peer: Option<(IpAddr, Arc<Semaphore>)>,
    records: Arc<Mutex<HashMap<Key, Record>>>,
    keys: [Option<Key>; 2],
}

impl Admission {
    /// Verifies a password (`f`) once a hashing slot is free, unless the username or the address
    /// went into back-off while this attempt waited (then RESOURCE_EXHAUSTED, nothing hashed).
    pub async fn verify(&self, f: impl FnOnce() -> bool + Send + 'static) -> Result<bool> {
        self.run(true, f).await
    }

    /// Hashes a new password (`f`) once a hashing slot is free.
    pub async fn hash<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.run(false, f).await
    }

    /// Runs `f` on the blocking pool holding a hashing slot; the blocking task itself holds the
    /// slot, so a request dropped meanwhile does not free it before the hash is done.
    async fn run<T: Send + 'static>(
        &self,
        recheck: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let _peer_slot = match &self.peer {
            Some((_, slots)) => Some(
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::unavailable("shutting down"))?,
            ),
            None => None,
        };
        let slot = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::unavailable("shutting down"))?;
        if recheck {
            let now = Instant::now();
            let records = lock(&self.records);
            if let Some(wait) = self
                .keys
                .iter()
                .flatten()
                .filter_map(|k| blocked_for(&records, *k, now))
                .max()
            {
                return Err(in_backoff(wait));
            }
        }
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f()
        })
        .await
        .map_err(|e| Error::internal(format!("password worker failed: {e}")))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ip, slots)) = self.peer.take() {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            // Ours and the table's: no other attempt of this address is in progress.
            if Arc::strong_count(&slots) <= 2 {
                peers.remove(&ip);
            }
        }
    }
}

impl LoginGate {
    /// A gate with `concurrency` hashing slots and `queue` waiting places.
    pub fn new(concurrency: usize, queue: usize) -> LoginGate {
        let concurrency = concurrency.max(1);
        return_large_blocks_to_the_os();
        LoginGate {
            hashing: Arc::new(Semaphore::new(concurrency)),
            peers: Arc::default(),
            per_peer: (concurrency - 1).max(1),
            admitted: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
            records: Arc::new(Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    /// Refuses (INVALID_ARGUMENT) credentials longer than [`MAX_CREDENTIAL_BYTES`].
    pub fn check_lengths(fields: &[(&str, &str)]) -> Result<()> {
        for (name, value) in fields {
            if value.len() > MAX_CREDENTIAL_BYTES {
                refused("too_long");
                return Err(Error::invalid(format!(
                    "{name} too long: {} bytes (at most {MAX_CREDENTIAL_BYTES})",
                    value.len()
                )));
            }
        }
        Ok(())
    }

    /// Lets an attempt for `username` from `peer` through, or refuses it with RESOURCE_EXHAUSTED
    /// (in back-off, or too many attempts in progress) and a hint of when to retry.
    pub fn admit(&self, username: &str, peer: Option<IpAddr>) -> Result<Admission> {
        let now = Instant::now();
        let keys = self.keys(username, peer);
        let wait = {
            let records = self.lock();
            keys.iter()
                .flatten()
                .filter_map(|k| blocked_for(&records, *k, now))
                .max()
        };
        if let Some(wait) = wait {
            return Err(in_backoff(wait));
        }
        let place = self.admitted.clone().try_acquire_owned().map_err(|_| {
            refused("busy");
            Error::new(
                Code::ResourceExhausted,
                "too many logins in progress; retry in a second",
            )
        })?;
        let peer = peer.map(|ip| {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let slots = peers
                .entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_peer)))
                .clone();
            (ip, slots)
        });
        Ok(Admission {
            _place: place,
            hashing: self.hashing.clone(),
            peers: self.peers.clone(),
            peer,
            records: self.records.clone(),
            keys,
        })
    }

    /// Counts a failed attempt against `username` and `peer`.
    pub fn record_failure(&self, username: &str, peer: Option<IpAddr>) {
        let now = Instant::now();
        let mut records = self.lock();
        if records.len() >= MAX_TRACKED {
            prune(&mut records, now);
        }
        for (key, threshold) in self
            .keys(username, peer)
            .into_iter()
            .zip([USER_FAILURES_BEFORE_BACKOFF, PEER_FAILURES_BEFORE_BACKOFF])
        {
            let Some(key) = key else { continue };
            let record = records.entry(key).or_insert(Record {
                failures: 0,
                last_failure: now,
                blocked_until: None,
            });
            if now.duration_since(record.last_failure) > FORGET_AFTER {
                record.failures = 0;
            }
            record.failures = record.failures.saturating_add(1);
            record.last_failure = now;
            record.blocked_until = backoff(record.failures, threshold).map(|d| now + d);
        }
    }

    /// A successful login clears the username's record (not the address's: one good account
    /// must not reset the count of guesses at others).
    pub fn record_success(&self, username: &str) {
        let key = Key::User(self.hasher.hash_one(username));
        self.lock().remove(&key);
    }

    fn keys(&self, username: &str, peer: Option<IpAddr>) -> [Option<Key>; 2] {
        [
            Some(Key::User(self.hasher.hash_one(username))),
            peer.map(Key::Peer),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        lock(&self.records)
    }
}

fn lock(records: &Mutex<HashMap<Key, Record>>) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
    // The table is only counters: after a panic elsewhere it is still usable.
    records.lock().unwrap_or_else(|e| e.into_inner())
}

/// How much longer `key` is in back-off, if it is.
fn blocked_for(records: &HashMap<Key, Record>, key: Key, now: Instant) -> Option<Duration> {
    let until = records.get(&key)?.blocked_until?;
    (until > now).then(|| until - now)
}

fn in_backoff(wait: Duration) -> Error {
    refused("backoff");
    let secs = wait.as_secs_f64().ceil().max(1.0);
    Error::new(
        Code::ResourceExhausted,
        format!("too many failed logins; retry in {secs:.0}s"),
    )
}

/// Makes glibc serve blocks of 1 MiB and more (a password hash's 19 MiB) with their own mappings,
/// unmapped when freed. By default glibc raises that threshold after the first such free and then
/// keeps freed hash memory in each thread's arena, so RSS grows with every blocking thread that
/// ever hashed. Process-wide and idempotent.
fn return_large_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning; any value is valid to pass.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        });
    }
}

/// The back-off after `failures` failures, for a key slowed down from `threshold` on.
fn backoff(failures: u32, threshold: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(threshold)?;
    let factor = 1u32.checked_shl(beyond.min(16)).unwrap_or(u32::MAX);
    Some(FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF))
}

/// Makes room in a full table: forgotten records first, then every record not in back-off, then
/// everything (the flood that filled it is then throttled by the semaphore alone until it refills).
fn prune(records: &mut HashMap<Key, Record>, now: Instant) {
    records.retain(|_, r| now.duration_since(r.last_failure) <= FORGET_AFTER);
    if records.len() >= MAX_TRACKED {
        records.retain(|_, r| r.blocked_until.is_some_and(|u| u > now));
    }
    if records.len() >= MAX_TRACKED {
        records.clear();
    }
}

fn refused(reason: &'static str) {
    metrics::counter!(m::LOGINS_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        assert_eq!(backoff(4, 5), None);
        assert_eq!(backoff(5, 5), Some(Duration::from_secs(1)));
        assert_eq!(backoff(6, 5), Some(Duration::from_secs(2)));
        assert_eq!(backoff(8, 5), Some(Duration::from_secs(8)));
        assert_eq!(backoff(11, 5), Some(MAX_BACKOFF));
        assert_eq!(backoff(u32::MAX, 5), Some(MAX_BACKOFF));
    }

    #[test]
    fn a_user_is_slowed_down_after_failures_and_cleared_by_a_success() {
        let gate = LoginGate::new(2, 4);
        for _ in 0..USER_FAILURES_BEFORE_BACKOFF - 1 {
            gate.admit("alice", PEER).unwrap();
            gate.record_failure("alice", PEER);
        }
        assert!(gate.admit("alice", PEER).is_ok());
        gate.record_failure("alice", PEER);
        let e = gate.admit("alice", PEER).err().unwrap();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(e.message.contains("retry in 1s"), "{}", e.message);
        // Another user from the same address is not slowed down yet.
        assert!(gate.admit("bob", PEER).is_ok());
        gate.record_success("alice");
        assert!(gate.admit("alice", PEER).is_ok());
    }

    #[test]
    fn an_address_is_slowed_down_for_every_user() {
        let gate = LoginGate::new(2, 4);
        for i in 0..PEER_FAILURES_BEFORE_BACKOFF {
            gate.record_failure(&format!("user{i}"), PEER);
        }
        assert!(gate.admit("someone-else", PEER).is_err());
        assert!(gate.admit("someone-else", None).is_ok());
    }

    #[test]
    fn admissions_beyond_slots_and_queue_are_refused() {
        let gate = LoginGate::new(1, 2);
        let held: Vec<_> = (0..3).map(|_| gate.admit("u", None).unwrap()).collect();
        let e = gate.admit("u", None).err().unwrap();
        assert_eq!(e.code, Code::ResourceExhausted);
        drop(held);
        assert!(gate.admit("u", None).is_ok());
    }

    #[tokio::test]
    async fn an_attempt_admitted_before_the_backoff_is_not_hashed() {
        let gate = LoginGate::new(1, 8);
        let waiting = gate.admit("carol", PEER).unwrap();
        for _ in 0..USER_FAILURES_BEFORE_BACKOFF {
            gate.record_failure("carol", PEER);
        }
        let e = waiting.verify(|| true).await.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        // Hashing a new password after a verified one is not refused.
        assert_eq!(waiting.hash(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn one_address_takes_at_most_its_share_of_the_slots() {
        let gate = LoginGate::new(1, 8);
        let first = gate.admit("a", PEER).unwrap();
        let second = gate.admit("b", PEER).unwrap();
        assert_eq!(gate.peers.lock().unwrap().len(), 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn(async move { first.hash(move || rx.recv().is_ok()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The address's only slot is taken: its second attempt waits, another address's does not
        // wait for it (only for the global slot, here also taken, so it times out too)...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.hash(|| ()))
                .await
                .is_err()
        );
        tx.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        second.hash(|| ()).await.unwrap();
        drop(second);
        assert!(
            gate.peers.lock().unwrap().is_empty(),
            "the entry leaves with the last attempt"
        );
    }

    #[test]
    fn long_credentials_are_refused() {
        let long = "p".repeat(MAX_CREDENTIAL_BYTES + 1);
        let e = LoginGate::check_lengths(&[("username", "u"), ("password", &long)]).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.starts_with("password too long"));
        let fits = "p".repeat(MAX_CREDENTIAL_BYTES);
        assert!(LoginGate::check_lengths(&[("password", &fits)]).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let gate = LoginGate::new(1, 1);
        for i in 0..MAX_TRACKED + 10 {
            gate.record_failure(&i.to_string(), None);
        }
        assert!(gate.lock().len() <= MAX_TRACKED);
    }
}
