//! The integration tests, one binary (one link of the crate, one PostgreSQL for the whole run):
//! one module per area, each the former `tests/<area>.rs`. Run one area with
//! `cargo test --test it <area>::`. The harness is `tests/common/` (shared with the binaries that
//! need a process of their own: `tests/hardening.rs`, `tests/adversarial/`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../fleet_support/mod.rs"]
mod fleet_support;

mod batch;
mod browser;
mod catalog;
mod cli;
mod cluster_settings;
mod dependency_sweep;
mod deploy_files;
mod dispatch_concurrency;
mod embedded_serve;
mod events;
mod files;
mod files_roots;
mod fleet_e2e;
mod fleet_jobs;
mod fleet_local;
mod foundation;
mod leadership;
mod leadership_pg;
mod limits;
mod local_cluster;
mod logs;
mod logs_legacy;
mod monitoring;
mod original_yaml;
mod ping_rules;
mod proto_conformance;
mod recruiters;
mod roles;
mod sandbox;
mod status_batch;
mod submit_batch;
mod tasks;
mod templates;
mod watch;
mod watchdog;
mod web_http;
mod web_rest;
mod web_ws;
mod worker_agent;
mod worker_builtins;
mod worker_e2e;
mod workers;
mod workflows;
