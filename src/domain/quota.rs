//! Quotas (docs/architecture.md#state-lives-in-postgresql): the limit a provider/region may use, in
//! vCPUs and optionally memory, against a usage that the caller computes from the worker rows
//! (never a counter). Recruiters deploy only where a quota is configured; a person's CreateWorker
//! is limited only where one is.

/// The configured limit of one provider/region (`providers.<class>.<name>.quotas.<region>`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub max_cpu: i64,
    /// Memory limit in GB; `None` (or ≤ 0 in the file) = no memory limit.
    pub max_mem: Option<f64>,
}

impl Quota {
    /// A quota of `cpu` vCPUs and `mem` GB, as the configuration states it: a memory limit ≤ 0
    /// means none.
    pub fn new(cpu: i64, mem: Option<f64>) -> Quota {
        Quota {
            max_cpu: cpu,
            max_mem: mem.filter(|m| *m > 0.0),
        }
    }
}

/// What the workers of one provider/region use: the sum of their flavors' cpu and memory.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub cpu: i64,
    pub mem: f64,
}

impl Usage {
    pub fn add(&mut self, cpu: i64, mem: f64) {
        self.cpu += cpu;
        self.mem += mem;
    }
}

/// Whether `count` more workers of (`cpu`, `mem`) fit in `quota` given `usage`; `Err` says why not.
pub fn fits(quota: &Quota, usage: Usage, count: i64, cpu: i64, mem: f64) -> Result<(), String> {
    let want_cpu = usage.cpu.saturating_add(count.saturating_mul(cpu));
    if want_cpu > quota.max_cpu {
        return Err(format!(
            "quota exceeded: {count} worker(s) of {cpu} vCPU would bring the region to {want_cpu} \
             vCPU, over its quota of {} (in use: {})",
            quota.max_cpu, usage.cpu
        ));
    }
    if let Some(max_mem) = quota.max_mem {
        let want_mem = usage.mem + count as f64 * mem;
        if want_mem > max_mem + 1e-9 {
            return Err(format!(
                "quota exceeded: {count} worker(s) of {mem} GB would bring the region to \
                 {want_mem} GB of memory, over its quota of {max_mem} GB (in use: {})",
                usage.mem
            ));
        }
    }
    Ok(())
}

/// The recruiter's rule (the original's `can_launch`): no quota configured → never.
pub fn can_launch(quota: Option<&Quota>, usage: Usage, cpu: i64, mem: f64) -> bool {
    quota.is_some_and(|q| fits(q, usage, 1, cpu, mem).is_ok())
}

/// A person's CreateWorker: limited by the quota where one is configured, free elsewhere.
pub fn check_manual(
    quota: Option<&Quota>,
    usage: Usage,
    count: i64,
    cpu: i64,
    mem: f64,
) -> Result<(), String> {
    match quota {
        Some(q) => fits(q, usage, count, cpu, mem),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Q: Quota = Quota {
        max_cpu: 16,
        max_mem: Some(64.0),
    };

    #[test]
    fn no_quota_means_no_recruiting_but_manual_is_free() {
        assert!(!can_launch(None, Usage::default(), 1, 1.0));
        assert!(check_manual(None, Usage::default(), 1000, 64, 256.0).is_ok());
    }

    #[test]
    fn cpu_and_memory_limits() {
        let used = Usage { cpu: 8, mem: 32.0 };
        assert!(can_launch(Some(&Q), used, 8, 32.0));
        assert!(!can_launch(Some(&Q), used, 9, 1.0));
        assert!(!can_launch(Some(&Q), used, 1, 33.0));
        let no_mem = Quota {
            max_cpu: 16,
            max_mem: None,
        };
        assert!(can_launch(Some(&no_mem), used, 8, 1000.0));
        let e = check_manual(Some(&Q), used, 3, 4, 8.0).unwrap_err();
        assert!(e.contains("20 vCPU") && e.contains("16"), "{e}");
    }

    #[test]
    fn zero_memory_in_the_file_means_no_limit() {
        let q = Quota::new(4, Some(0.0));
        assert_eq!(q.max_mem, None);
    }

    proptest! {
        /// Launching one at a time while `can_launch` says yes never exceeds the quota.
        #[test]
        fn greedy_launches_stay_within_quota(
            max_cpu in 0i64..200, max_mem in proptest::option::of(0.0f64..800.0),
            flavors in proptest::collection::vec((1i64..32, 0.5f64..128.0), 1..6),
        ) {
            let q = Quota { max_cpu, max_mem };
            let mut used = Usage::default();
            for _ in 0..300 {
                let Some(&(cpu, mem)) = flavors.iter().find(|(c, m)| can_launch(Some(&q), used, *c, *m)) else { break };
                used.add(cpu, mem);
            }
            prop_assert!(used.cpu <= max_cpu);
            if let Some(m) = max_mem { prop_assert!(used.mem <= m + 1e-6); }
        }
    }
}
