//! Catalog and credentials: catalog synchronisation from the configuration, ListProviders,
//! ListRegions, ListFlavors with protofilters (including hostile ones), CreateFlavor, the provider
//! catalogue refresh, GetRcloneConfig, GetDockerCredentials, GetWorkspaceRoot.

use crate::common;
use crate::fleet_support;

use common::{postgres, spawn_replica, test_config};
use fleet_support::{count, fleet_replica, fleet_replica_with, leader, providers_of, sql};
use taskqueue::config::DockerCredential;
use taskqueue::proto as pb;
use tonic::Code;

const PROVIDERS: &str = "
fake:
  test:
    regions: [r1, r2]
    default_region: r2
    quotas: {r1: {cpu: 16}}
    local_workspaces: {r1: 's3://ws-r1', '*': 's3://ws-any'}
azure:
  primary:
    regions: [westeurope]
";

fn flavor(
    name: &str,
    cpu: i32,
    mem: f32,
    regions: &[&str],
    costs: &[f32],
) -> pb::FlavorCreateRequest {
    pb::FlavorCreateRequest {
        provider_name: "fake".into(),
        config_name: "test".into(),
        flavor_name: name.into(),
        cpu,
        memory: mem,
        disk: 50.0,
        region_names: regions.iter().map(|r| r.to_string()).collect(),
        costs: costs.to_vec(),
        ..Default::default()
    }
}

async fn names(client: &mut taskqueue::client::Client, filter: &str, limit: i32) -> Vec<String> {
    client
        .list_flavors(pb::ListFlavorsRequest {
            limit,
            filter: filter.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flavors
        .into_iter()
        .map(|f| format!("{}@{}", f.flavor_name, f.region))
        .collect()
}

#[tokio::test]
async fn catalog_sync_from_config_is_idempotent_and_keeps_used_regions() {
    // The `local` provider is opt-in.
    let (r, ctx) = fleet_replica_with(PROVIDERS, |c| c.local_provider = true).await;
    let mut c = r.worker();
    let providers = c.list_providers(()).await.unwrap().into_inner().providers;
    let full: Vec<String> = providers
        .iter()
        .map(|p| format!("{}.{}", p.provider_name, p.config_name))
        .collect();
    assert!(full.contains(&"local.local".to_string()), "{full:?}");
    assert!(full.contains(&"fake.test".to_string()));
    assert!(full.contains(&"azure.primary".to_string()));
    assert!(
        providers
            .windows(2)
            .all(|w| w[0].provider_id < w[1].provider_id)
    );
    let regions = c.list_regions(()).await.unwrap().into_inner().regions;
    let region = |name: &str| {
        regions
            .iter()
            .find(|r| r.region_name == name)
            .unwrap()
            .clone()
    };
    assert!(region("local").is_default);
    assert!(region("r2").is_default && !region("r1").is_default);
    assert_eq!(regions.len(), 4);

    // Twice, and from two leaders at once: nothing changes, nothing fails.
    let again = taskqueue::loops::catalog::take_office(&ctx).await.unwrap();
    assert!(again.providers_added.is_empty() && again.regions_added.is_empty());
    let ctx2 = leader(&r.config, 2).await;
    let (a, b) = tokio::join!(
        taskqueue::loops::catalog::take_office(&ctx2),
        taskqueue::loops::catalog::take_office(&ctx2)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        c.list_regions(()).await.unwrap().into_inner().regions.len(),
        4
    );
    // The old term is fenced out.
    let err = taskqueue::loops::catalog::take_office(&ctx)
        .await
        .unwrap_err();
    assert_eq!(err.code, taskqueue::error::Code::FailedPrecondition);

    // r1 leaves the configuration while a worker uses it; r2 leaves unused; default moves.
    let db = sql(&r).await;
    db.execute(
        "INSERT INTO worker (worker_name, region_id) VALUES ('w-r1', $1)",
        &[&region("r1").region_id],
    )
    .await
    .unwrap();
    let mut config = r.config.clone();
    config.providers =
        fleet_support::providers("fake:\n  test:\n    regions: [r3]\n    default_region: r3\n");
    let ctx3 = leader(&config, 3).await;
    let report = taskqueue::loops::catalog::take_office(&ctx3).await.unwrap();
    assert_eq!(report.regions_kept, vec!["fake.test:r1".to_string()]);
    assert!(report.regions_removed.contains(&"fake.test:r2".to_string()));
    assert!(
        report
            .regions_removed
            .contains(&"azure.primary:westeurope".to_string())
    );
    let regions = c.list_regions(()).await.unwrap().into_inner().regions;
    let mut left: Vec<(String, bool)> = regions
        .iter()
        .map(|r| (r.region_name.clone(), r.is_default))
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            ("local".into(), true),
            ("r1".into(), false),
            ("r3".into(), true)
        ]
    );
}

#[tokio::test]
async fn list_flavors_filters_orders_and_limits() {
    let (r, _ctx) = fleet_replica(PROVIDERS).await;
    let mut admin = r.admin().await;
    admin
        .create_flavor(flavor("small", 2, 4.0, &["r1", "r2"], &[0.2, 0.1]))
        .await
        .unwrap();
    let mut big = flavor("big", 16, 64.0, &["r1"], &[1.5]);
    big.has_gpu = Some(true);
    big.gpu = Some("A100".into());
    admin.create_flavor(big).await.unwrap();
    admin
        .create_flavor(flavor("medium", 8, 32.0, &["r2"], &[0.7]))
        .await
        .unwrap();
    let mut c = r.plain_user("alice").await;

    assert_eq!(
        names(&mut c, "", 10).await,
        vec!["small@r2", "small@r1", "medium@r2", "big@r1"],
        "cheapest first, one row per flavor and region"
    );
    assert_eq!(names(&mut c, "", 2).await, vec!["small@r2", "small@r1"]);
    assert!(names(&mut c, "", 0).await.is_empty(), "limit 0 → no rows");
    assert_eq!(
        names(&mut c, "cpu>=8:mem>=30", 10).await,
        vec!["medium@r2", "big@r1"]
    );
    assert_eq!(names(&mut c, "cpu>4:cpu<16", 10).await, vec!["medium@r2"]);
    assert_eq!(
        names(&mut c, "region is default", 10).await,
        vec!["small@r2", "medium@r2"]
    );
    assert_eq!(
        names(&mut c, "region~r%:cost<=0.15", 10).await,
        vec!["small@r2"]
    );
    assert_eq!(
        names(&mut c, "provider=fake.test:has_gpu", 10).await,
        vec!["big@r1"]
    );
    assert_eq!(names(&mut c, "gpu=A100", 10).await, vec!["big@r1"]);
    assert_eq!(
        names(&mut c, "flavor_name=medium", 10).await,
        vec!["medium@r2"]
    );
    assert_eq!(
        names(&mut c, "has_gpu=false:eviction<=0", 10).await.len(),
        3
    );
    let f = c
        .list_flavors(pb::ListFlavorsRequest {
            limit: 1,
            filter: "flavor=big".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flavors
        .remove(0);
    assert_eq!(
        (f.cpu, f.mem, f.disk, f.has_gpu, f.cost),
        (16, 64.0, 50.0, true, 1.5)
    );
    assert_eq!(f.provider, "fake.test");

    // Hostile filters: refused with the token named, or bound as plain values.
    for bad in [
        "cpu>=1;DROP TABLE worker",
        "nonsense>1",
        "cpu~1",
        "region is here",
        "cpu>=x",
    ] {
        let e = c
            .list_flavors(pb::ListFlavorsRequest {
                limit: 10,
                filter: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(
            e.message().contains("invalid protofilter token"),
            "{}",
            e.message()
        );
    }
    for odd in [
        "region='r1';DROP--",
        "flavor=small'OR'1'='1",
        "provider=x\\",
        "region~%'%",
        "flavor=\u{1F600}\u{0301}é",
    ] {
        assert!(names(&mut c, odd, 10).await.is_empty(), "{odd}");
    }
    let huge = "cpu>=1:".repeat(2000);
    let e = c
        .list_flavors(pb::ListFlavorsRequest {
            limit: 1,
            filter: huge,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .list_flavors(pb::ListFlavorsRequest {
            limit: -1,
            filter: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let db = sql(&r).await;
    assert_eq!(
        count(&db, "worker").await,
        0,
        "the worker table is still there"
    );
    assert_eq!(count(&db, "flavor").await, 3);

    // The cache answered some of these, and says so.
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("taskqueue_cache_requests_total{cache=\"flavors\",result=\"miss\"}"),
        "{metrics}"
    );
    names(&mut c, "cpu>=8:mem>=30", 10).await;
    assert!(
        r.metrics()
            .await
            .contains("taskqueue_cache_requests_total{cache=\"flavors\",result=\"hit\"}")
    );
}

#[tokio::test]
async fn create_flavor_validates_and_is_one_transaction() {
    let (r, _ctx) = fleet_replica(PROVIDERS).await;
    let mut admin = r.admin().await;
    let db = sql(&r).await;
    let id = admin
        .create_flavor(flavor("small", 2, 4.0, &["r1"], &[]))
        .await
        .unwrap()
        .into_inner()
        .flavor_id;
    assert!(id > 0);
    let row = db
        .query_one(
            "SELECT f.bandwidth, f.gpu, fr.cost, fr.eviction, fr.available FROM flavor f
               JOIN flavor_region fr USING (flavor_id) WHERE f.flavor_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(
        (
            row.get::<_, f64>(2),
            row.get::<_, f64>(3),
            row.get::<_, bool>(4)
        ),
        (0.0, 0.0, true)
    );

    let cases: Vec<(pb::FlavorCreateRequest, Code)> = vec![
        (flavor("small", 2, 4.0, &["r1"], &[]), Code::AlreadyExists),
        (flavor("", 2, 4.0, &["r1"], &[]), Code::InvalidArgument),
        (flavor("x", 2, 4.0, &[], &[]), Code::InvalidArgument),
        (
            flavor("x", 2, 4.0, &["r1", "r2"], &[0.1]),
            Code::InvalidArgument,
        ),
        (flavor("x", -2, 4.0, &["r1"], &[]), Code::InvalidArgument),
        (
            flavor("x", 2, f32::NAN, &["r1"], &[]),
            Code::InvalidArgument,
        ),
        (flavor("x", 2, 4.0, &["r1", "nowhere"], &[]), Code::NotFound),
        (
            pb::FlavorCreateRequest {
                config_name: "missing".into(),
                ..flavor("x", 2, 4.0, &["r1"], &[])
            },
            Code::NotFound,
        ),
        (
            pb::FlavorCreateRequest {
                provider_name: String::new(),
                ..flavor("x", 2, 4.0, &["r1"], &[])
            },
            Code::InvalidArgument,
        ),
    ];
    for (request, code) in cases {
        let e = admin.create_flavor(request.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {}", e.message());
    }
    // The unknown-region case had inserted its flavor before failing: rolled back.
    assert_eq!(count(&db, "flavor").await, 1);
    assert_eq!(count(&db, "flavor_region").await, 1);

    for mut who in [r.worker(), r.plain_user("bob").await] {
        let e = who
            .create_flavor(flavor("y", 2, 4.0, &["r1"], &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    assert_eq!(count(&db, "flavor").await, 1);
}

#[tokio::test]
async fn provider_catalogues_are_applied_and_refreshed() {
    let cloud = fleet_support::unique_cloud("catalog");
    let yaml = format!(
        "fake:\n  cat:\n    cloud: {cloud}\n    regions: [r1, r2]\n    update_periodicity: 1h\n    flavors:\n      \
         - {{name: s, cpu: 2, mem: 4, cost: 0.1}}\n      - {{name: g, cpu: 8, mem: 32, has_gpu: true, cost: 2, regions: [r2]}}\n"
    );
    let (r, ctx) = fleet_replica(&yaml).await;
    let providers = providers_of(&r);
    let refresher = taskqueue::loops::catalog::CatalogRefresher::new();
    assert_eq!(refresher.run_once(&ctx, &providers).await.unwrap(), 1);
    assert_eq!(
        refresher.run_once(&ctx, &providers).await.unwrap(),
        0,
        "not due again"
    );
    let mut c = r.worker();
    assert_eq!(
        names(&mut c, "provider=fake.cat", 10).await,
        vec!["s@r1", "s@r2", "g@r2"]
    );

    // The provider drops g and stops offering s in r2: s@r2 and g become unavailable.
    let mut config = r.config.clone();
    config.providers = fleet_support::providers(&format!(
        "fake:\n  cat:\n    cloud: {cloud}\n    regions: [r1, r2]\n    flavors:\n      - {{name: s, cpu: 4, mem: 4, regions: [r1]}}\n"
    ));
    let ctx2 = leader(&config, 2).await;
    let env = taskqueue::providers::Environment::for_replica(&config, r.addr, common::WORKER_TOKEN);
    let providers2 = taskqueue::providers::Providers::from_config(&config, &env).unwrap();
    let refresher2 = taskqueue::loops::catalog::CatalogRefresher::new();
    refresher2.run_once(&ctx2, &providers2).await.unwrap();
    let db = sql(&r).await;
    let rows = db
        .query(
            "SELECT f.flavor_name, r.region_name, fr.available, f.cpu FROM flavor f
               JOIN flavor_region fr USING (flavor_id) JOIN region r USING (region_id)
              ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, bool, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("g".into(), "r2".into(), false, 8),
            ("s".into(), "r1".into(), true, 4),
            ("s".into(), "r2".into(), false, 4),
        ]
    );
}

#[tokio::test]
async fn credentials_go_to_workers_and_admins_only() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.providers = fleet_support::providers(PROVIDERS);
    config.rclone = [(
        "s3".to_string(),
        [
            ("type", "s3"),
            ("access_key_id", "AK"),
            ("endpoint", "http://minio"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )]
    .into_iter()
    .collect();
    config.docker_credentials = vec![DockerCredential {
        registry: "registry.example".into(),
        secret: "c2VjcmV0".into(),
    }];
    let r = spawn_replica(config).await;
    for mut who in [r.worker(), r.admin().await] {
        let remotes = who
            .get_rclone_config(())
            .await
            .unwrap()
            .into_inner()
            .remotes;
        assert_eq!(remotes["s3"].options["access_key_id"], "AK");
        assert_eq!(remotes["s3"].options.len(), 3);
        let docker = who.get_docker_credentials(()).await.unwrap().into_inner();
        assert_eq!(
            docker.credentials,
            vec![pb::DockerCredential {
                registry: "registry.example".into(),
                auth: "c2VjcmV0".into()
            }]
        );
    }
    let mut alice = r.plain_user("alice").await;
    assert_eq!(
        alice.get_rclone_config(()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        alice.get_docker_credentials(()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        r.anonymous()
            .get_rclone_config(())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert!(
        r.metrics()
            .await
            .contains("taskqueue_cache_requests_total{cache=\"credentials\",result=\"hit\"}")
    );

    let root = |provider: &str, region: &str| pb::WorkspaceRootRequest {
        provider: provider.into(),
        region: region.into(),
    };
    let ws = alice
        .get_workspace_root(root("fake.test", "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ws.root_uri, "s3://ws-r1");
    let ws = alice
        .get_workspace_root(root("fake.test", "r2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ws.root_uri, "s3://ws-any", "the '*' entry");
    for (p, region, code) in [
        ("azure.primary", "westeurope", Code::NotFound),
        ("fake.nope", "r1", Code::NotFound),
        ("fake", "r1", Code::NotFound),
        ("", "r1", Code::InvalidArgument),
    ] {
        let e = alice.get_workspace_root(root(p, region)).await.unwrap_err();
        assert_eq!(e.code(), code, "{p} {region}");
    }
}

#[tokio::test]
async fn a_replica_without_providers_still_has_local() {
    // Unless `--local-provider` is set, not even `local` is offered.
    let (off, _ctx) = fleet_replica_with("{}", |_| {}).await;
    let listed = off.worker().list_providers(()).await.unwrap().into_inner();
    assert!(listed.providers.is_empty(), "{listed:?}");
    let (r, _ctx) = fleet_replica_with("{}", |c| c.local_provider = true).await;
    let mut c = r.worker();
    let providers = c.list_providers(()).await.unwrap().into_inner().providers;
    assert_eq!(providers.len(), 1);
    assert_eq!(
        (
            providers[0].provider_name.as_str(),
            providers[0].config_name.as_str()
        ),
        ("local", "local")
    );
    let regions = c.list_regions(()).await.unwrap().into_inner().regions;
    assert_eq!(regions.len(), 1);
    assert!(regions[0].is_default);
}
