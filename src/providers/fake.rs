//! The `fake` provider: simulated VMs in a simulated cloud, for tests and fleet simulations. A VM
//! appears when a create starts and is ready after `create_delay`; creates and deletes fail at
//! configurable rates; with `auto_launch` each ready VM runs a simulated worker
//! ([`super::simworker`]) that registers, pings and runs tasks through gRPC.
//!
//! The cloud outlives replicas, as a real one does: clouds live in a process-wide registry keyed
//! by the `cloud` setting (default: the provider's full name), so two replicas in one process (tests)
//! share VMs, and a create retried by another replica finds the VM the first one started.
//!
//! Settings (`providers.fake.<name>.…`): `create_delay` / `delete_delay` (duration; the original's
//! `delayed_deploy: true` means 2 s), `create_failure_rate` / `delete_failure_rate` (0–1),
//! `auto_launch`, `server_addr` (one address or a list; default this replica), `ping_interval`,
//! `task_duration`, `task_failure_rate`, `cloud`, and `flavors` (the catalogue: name, cpu, mem, disk,
//! cost, eviction, gpu, gpumem, has_gpu, has_quick_disks, regions — default all regions).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::simworker::{SimStats, SimWorker, SimWorkerSettings};
use super::{
    Environment, Provider, ProviderError, ProviderResult, Vm, VmSpec, extra_bool, extra_duration,
    extra_f64, extra_strings,
};
use crate::config::ProviderConfig;
use crate::domain::catalog::CatalogFlavor;

/// A simulated VM.
#[derive(Debug, Clone)]
pub struct FakeVm {
    pub name: String,
    pub region: String,
    pub ip: Ipv4Addr,
    pub ready_at: Instant,
    /// What it was created for (a restart launches its simulated worker again from it).
    spec: VmSpec,
    /// Stops its simulated worker, if one runs.
    worker: Option<CancellationToken>,
}

/// Counters of a simulated cloud, for tests and simulations.
#[derive(Debug, Default)]
pub struct CloudStats {
    /// Create calls received (retries and take-overs included).
    pub create_calls: AtomicU64,
    /// VMs actually made (a create of an existing name makes none).
    pub vms_created: AtomicU64,
    pub vms_deleted: AtomicU64,
    pub failures: AtomicU64,
    /// Create calls in progress, and the most seen at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// A simulated cloud: its VMs, counters, and the simulated workers' counters.
#[derive(Debug, Default)]
pub struct FakeCloud {
    vms: Mutex<HashMap<String, FakeVm>>,
    next_ip: AtomicU64,
    pub stats: CloudStats,
    pub workers: Arc<SimStats>,
}

impl FakeCloud {
    /// The VMs that exist now, by name.
    pub fn vms(&self) -> Vec<FakeVm> {
        let mut v: Vec<FakeVm> = self.vms.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn vm_count(&self) -> usize {
        self.vms.lock().unwrap().len()
    }

    fn allocate_ip(&self) -> Ipv4Addr {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed) + 1;
        Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
    }

    /// Stops every simulated worker (end of a test or simulation).
    pub fn shutdown(&self) {
        for vm in self.vms.lock().unwrap().values() {
            if let Some(w) = &vm.worker {
                w.cancel();
            }
        }
    }
}

static CLOUDS: OnceLock<Mutex<HashMap<String, Arc<FakeCloud>>>> = OnceLock::new();

/// The process' simulated cloud named `id`, created on first use.
pub fn cloud(id: &str) -> Arc<FakeCloud> {
    CLOUDS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .clone()
}

#[derive(Debug, Clone, Deserialize)]
struct FakeFlavor {
    name: String,
    cpu: i32,
    mem: f64,
    #[serde(default)]
    disk: f64,
    #[serde(default)]
    cost: f64,
    #[serde(default)]
    eviction: f64,
    #[serde(default)]
    bandwidth: i32,
    #[serde(default)]
    gpu: String,
    #[serde(default)]
    gpumem: i32,
    #[serde(default)]
    has_gpu: bool,
    #[serde(default)]
    has_quick_disks: bool,
    #[serde(default)]
    regions: Option<Vec<String>>,
}

/// Behaviour of a fake provider.
#[derive(Debug, Clone, Default)]
pub struct FakeSettings {
    pub create_delay: Duration,
    pub delete_delay: Duration,
    pub create_failure_rate: f64,
    pub delete_failure_rate: f64,
    pub auto_launch: bool,
    pub servers: Vec<String>,
    pub worker: SimWorkerSettings,
}

pub struct FakeProvider {
    full_name: String,
    settings: FakeSettings,
    catalog: Vec<CatalogFlavor>,
    cloud: Arc<FakeCloud>,
    token: String,
    /// The channel of this provider's simulated workers, made on the first launch.
    channel: OnceLock<tonic::transport::Channel>,
}

fn rate(v: Option<f64>, key: &str) -> anyhow::Result<f64> {
    let v = v.unwrap_or(0.0);
    anyhow::ensure!((0.0..=1.0).contains(&v), "{key} must be between 0 and 1");
    Ok(v)
}

impl FakeProvider {
    pub fn from_config(
        name: &str,
        cfg: &ProviderConfig,
        env: &Environment,
    ) -> anyhow::Result<Self> {
        let full_name = format!("fake.{name}");
        let ctx = |e: anyhow::Error| anyhow::anyhow!("providers.fake.{name}.{e}");
        let create_delay = match cfg.extra.get("delayed_deploy") {
            Some(serde_yaml::Value::Bool(true)) => Some(Duration::from_secs(2)),
            Some(serde_yaml::Value::Bool(false)) => None,
            _ => extra_duration(cfg, "delayed_deploy").map_err(ctx)?,
        };
        let create_delay = extra_duration(cfg, "create_delay")
            .map_err(ctx)?
            .or(create_delay)
            .unwrap_or_default();
        let mut worker = SimWorkerSettings::default();
        if let Some(d) = extra_duration(cfg, "ping_interval").map_err(ctx)? {
            worker.ping_interval = d;
        }
        if let Some(d) = extra_duration(cfg, "task_duration").map_err(ctx)? {
            worker.task_duration = d;
        }
        worker.task_failure_rate = rate(
            extra_f64(cfg, "task_failure_rate").map_err(ctx)?,
            "task_failure_rate",
        )
        .map_err(ctx)?;
        let settings = FakeSettings {
            create_delay,
            delete_delay: extra_duration(cfg, "delete_delay")
                .map_err(ctx)?
                .unwrap_or_default(),
            create_failure_rate: rate(
                extra_f64(cfg, "create_failure_rate").map_err(ctx)?,
                "create_failure_rate",
            )
            .map_err(ctx)?,
            delete_failure_rate: rate(
                extra_f64(cfg, "delete_failure_rate").map_err(ctx)?,
                "delete_failure_rate",
            )
            .map_err(ctx)?,
            auto_launch: extra_bool(cfg, "auto_launch")
                .map_err(ctx)?
                .unwrap_or(false),
            servers: extra_strings(cfg, "server_addr")
                .map_err(ctx)?
                .unwrap_or_else(|| vec![env.server_url.clone()]),
            worker,
        };
        let cloud_id = extra_strings(cfg, "cloud")
            .map_err(ctx)?
            .and_then(|v| v.into_iter().next())
            .unwrap_or_else(|| full_name.clone());
        let regions = cfg.effective_regions();
        let flavors: Vec<FakeFlavor> = match cfg.extra.get("flavors") {
            None | Some(serde_yaml::Value::Null) => Vec::new(),
            Some(v) => serde_yaml::from_value(v.clone())
                .map_err(|e| anyhow::anyhow!("providers.fake.{name}.flavors: {e}"))?,
        };
        let catalog = flavors
            .into_iter()
            .map(|f| CatalogFlavor {
                offers: f
                    .regions
                    .unwrap_or_else(|| regions.clone())
                    .into_iter()
                    .map(|r| (r, f.cost, f.eviction))
                    .collect(),
                name: f.name,
                cpu: f.cpu,
                mem: f.mem,
                disk: f.disk,
                bandwidth: f.bandwidth,
                gpu: f.gpu,
                gpumem: f.gpumem,
                has_gpu: f.has_gpu,
                has_quick_disks: f.has_quick_disks,
            })
            .collect();
        Ok(FakeProvider::new(
            full_name,
            settings,
            catalog,
            cloud(&cloud_id),
            &env.worker_token,
        ))
    }

    pub fn new(
        full_name: String,
        settings: FakeSettings,
        catalog: Vec<CatalogFlavor>,
        cloud: Arc<FakeCloud>,
        token: &str,
    ) -> FakeProvider {
        FakeProvider {
            full_name,
            settings,
            catalog,
            cloud,
            token: token.to_string(),
            channel: OnceLock::new(),
        }
    }

    pub fn cloud(&self) -> &Arc<FakeCloud> {
        &self.cloud
    }

    fn fails(&self, rate: f64) -> bool {
        rate > 0.0 && rand::random::<f64>() < rate
    }

    fn launch(&self, spec: &VmSpec) -> CancellationToken {
        let cancel = CancellationToken::new();
        let channel = match self.channel.get() {
            Some(c) => Ok(c.clone()),
            None => super::simworker::channel(&self.settings.servers)
                .map(|c| self.channel.get_or_init(|| c).clone()),
        };
        let client = match channel.and_then(|c| crate::client::with_token(c, Some(&self.token))) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(worker = %spec.worker_name, error = %e, "cannot launch a simulated worker");
                return cancel;
            }
        };
        let worker = SimWorker {
            name: spec.worker_name.clone(),
            provider: spec.provider.clone(),
            region: spec.region.clone(),
            concurrency: spec.concurrency,
            cpu: spec.flavor.cpu,
            mem: spec.flavor.mem,
            disk: spec.flavor.disk,
        };
        tokio::spawn(super::simworker::run(
            worker,
            self.settings.worker.clone(),
            client,
            self.cloud.workers.clone(),
            cancel.clone(),
        ));
        cancel
    }
}

/// Decrements the in-flight counter even when the create call is cancelled.
struct InFlight<'a>(&'a CloudStats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a CloudStats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    fn full_name(&self) -> &str {
        &self.full_name
    }

    async fn create(&self, spec: &VmSpec) -> ProviderResult<Vm> {
        let stats = &self.cloud.stats;
        stats.create_calls.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight::enter(stats);
        if self.fails(self.settings.create_failure_rate) {
            tokio::time::sleep(self.settings.create_delay / 2).await;
            stats.failures.fetch_add(1, Ordering::SeqCst);
            return Err(ProviderError::Failed(format!(
                "simulated failure creating {}",
                spec.worker_name
            )));
        }
        let ready_at = {
            let mut vms = self.cloud.vms.lock().unwrap();
            match vms.get(&spec.worker_name) {
                Some(vm) => vm.ready_at,
                None => {
                    let vm = FakeVm {
                        name: spec.worker_name.clone(),
                        region: spec.region.clone(),
                        ip: self.cloud.allocate_ip(),
                        ready_at: Instant::now() + self.settings.create_delay,
                        spec: spec.clone(),
                        worker: None,
                    };
                    stats.vms_created.fetch_add(1, Ordering::SeqCst);
                    let ready_at = vm.ready_at;
                    vms.insert(vm.name.clone(), vm);
                    ready_at
                }
            }
        };
        tokio::time::sleep_until(ready_at).await;
        let mut vms = self.cloud.vms.lock().unwrap();
        let Some(vm) = vms.get_mut(&spec.worker_name) else {
            return Err(ProviderError::Failed(format!(
                "{} was deleted while being created",
                spec.worker_name
            )));
        };
        if self.settings.auto_launch && vm.worker.is_none() {
            vm.worker = Some(self.launch(spec));
        }
        Ok(Vm {
            name: vm.name.clone(),
            region: vm.region.clone(),
            ipv4: Some(IpAddr::V4(vm.ip)),
        })
    }

    async fn delete(&self, worker_name: &str, _region: &str) -> ProviderResult<()> {
        tokio::time::sleep(self.settings.delete_delay).await;
        if self.fails(self.settings.delete_failure_rate) {
            self.cloud.stats.failures.fetch_add(1, Ordering::SeqCst);
            return Err(ProviderError::Failed(format!(
                "simulated failure deleting {worker_name}"
            )));
        }
        let removed = self.cloud.vms.lock().unwrap().remove(worker_name);
        if let Some(vm) = removed {
            if let Some(w) = vm.worker {
                w.cancel();
            }
            self.cloud.stats.vms_deleted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn restart(&self, worker_name: &str, _region: &str) -> ProviderResult<()> {
        let mut vms = self.cloud.vms.lock().unwrap();
        let vm = vms
            .get_mut(worker_name)
            .ok_or_else(|| ProviderError::Failed(format!("no VM named {worker_name}")))?;
        // The VM's worker process dies and, with auto_launch, starts again (and registers again).
        if let Some(w) = vm.worker.take() {
            w.cancel();
        }
        if self.settings.auto_launch {
            vm.worker = Some(self.launch(&vm.spec.clone()));
        }
        Ok(())
    }

    async fn list(&self, region: &str) -> ProviderResult<Vec<Vm>> {
        Ok(self
            .cloud
            .vms()
            .into_iter()
            .filter(|vm| vm.region == region)
            .map(|vm| Vm {
                name: vm.name,
                region: vm.region,
                ipv4: Some(IpAddr::V4(vm.ip)),
            })
            .collect())
    }

    async fn catalog(&self) -> ProviderResult<Option<Vec<CatalogFlavor>>> {
        Ok((!self.catalog.is_empty()).then(|| self.catalog.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(settings: FakeSettings) -> FakeProvider {
        let id = format!("unit-{}", rand::random::<u64>());
        FakeProvider::new("fake.unit".into(), settings, Vec::new(), cloud(&id), "t")
    }

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            worker_name: name.into(),
            region: "r1".into(),
            provider: "fake.unit".into(),
            ..VmSpec::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn create_is_idempotent_by_name_and_delete_too() {
        let p = provider(FakeSettings {
            create_delay: Duration::from_secs(30),
            ..FakeSettings::default()
        });
        let w1 = spec("w1");
        let (a, b) = tokio::join!(p.create(&w1), p.create(&w1));
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(p.cloud.stats.vms_created.load(Ordering::SeqCst), 1);
        assert_eq!(p.cloud.stats.create_calls.load(Ordering::SeqCst), 2);
        assert_eq!(p.cloud.stats.max_in_flight.load(Ordering::SeqCst), 2);
        assert_eq!(p.list("r1").await.unwrap().len(), 1);
        p.delete("w1", "r1").await.unwrap();
        p.delete("w1", "r1").await.unwrap();
        assert_eq!(p.cloud.vm_count(), 0);
        assert!(p.restart("w1", "r1").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_create_leaves_the_vm_to_the_retry() {
        let p = provider(FakeSettings {
            create_delay: Duration::from_secs(30),
            ..FakeSettings::default()
        });
        let first = tokio::time::timeout(Duration::from_secs(5), p.create(&spec("w1"))).await;
        assert!(first.is_err(), "timed out mid-create");
        assert_eq!(p.cloud.stats.in_flight.load(Ordering::SeqCst), 0);
        p.create(&spec("w1")).await.unwrap();
        assert_eq!(p.cloud.stats.vms_created.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rates_and_deleted_while_creating() {
        let p = provider(FakeSettings {
            create_failure_rate: 1.0,
            ..FakeSettings::default()
        });
        assert!(p.create(&spec("w1")).await.is_err());
        assert_eq!(p.cloud.vm_count(), 0);
        let p = provider(FakeSettings {
            create_delay: Duration::from_secs(10),
            ..FakeSettings::default()
        });
        let w2 = spec("w2");
        let (created, ()) = tokio::join!(p.create(&w2), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            p.delete("w2", "r1").await.unwrap();
        });
        assert!(created.is_err());
    }

    #[test]
    fn settings_from_yaml() {
        let cfg: ProviderConfig = serde_yaml::from_str(
            "regions: [r1, r2]\ndelayed_deploy: true\ncreate_failure_rate: 0.25\nauto_launch: true\n\
             server_addr: [http://a:1, http://b:2]\nping_interval: 200ms\n\
             flavors:\n  - {name: small, cpu: 2, mem: 4, cost: 0.1}\n  - {name: big, cpu: 8, mem: 32, regions: [r2]}\n",
        )
        .unwrap();
        let env = Environment {
            server_url: "http://127.0.0.1:1".into(),
            worker_token: "t".into(),
            data_dir: "/tmp".into(),
            ca_file: None,
        };
        let p = FakeProvider::from_config("yaml", &cfg, &env).unwrap();
        assert_eq!(p.settings.create_delay, Duration::from_secs(2));
        assert_eq!(p.settings.create_failure_rate, 0.25);
        assert!(p.settings.auto_launch);
        assert_eq!(p.settings.servers.len(), 2);
        assert_eq!(p.settings.worker.ping_interval, Duration::from_millis(200));
        assert_eq!(p.catalog.len(), 2);
        assert_eq!(p.catalog[0].offers.len(), 2);
        assert_eq!(p.catalog[1].offers, vec![("r2".to_string(), 0.0, 0.0)]);
        let bad: ProviderConfig = serde_yaml::from_str("create_failure_rate: 2").unwrap();
        assert!(FakeProvider::from_config("bad", &bad, &env).is_err());
    }
}
