//! Hostile requests (issue 13): each asserts the exact refusal, that the database is unchanged, that
//! the server still answers and that memory stayed bounded (`guard`). One module per area.
//! `cargo test --test adversarial -- --nocapture 2>&1 | grep -c '^hostile #'` counts them.
//!
//! A binary of its own, not a module of `tests/it`: every guard bounds the RSS growth of this
//! whole process (the replica runs in it), which the other areas' replicas running beside it in
//! one process would make meaningless.

#![allow(dead_code)] // guard helpers not every module uses

#[allow(unused_imports)] // the harness serves every binary; this one uses a part of it
#[path = "../common/mod.rs"]
mod common;
#[path = "../fleet_support/mod.rs"]
mod fleet_support;
mod guard;

mod every_rpc;
mod files;
mod hardening;
mod inputs;
mod limits;
mod roles;
mod sandbox;
mod smoke;
