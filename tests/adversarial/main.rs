//! Hostile requests (issue 13): each asserts the exact refusal, that the database is unchanged, that
//! the server still answers and that memory stayed bounded (`guard`). One module per area.
//! `cargo test --test adversarial -- --nocapture 2>&1 | grep -c '^hostile #'` counts them.

#![allow(dead_code)] // guard helpers not every module uses

#[path = "../common/mod.rs"]
mod common;
mod guard;

mod every_rpc;
mod hardening;
mod inputs;
mod smoke;
