#!/usr/bin/env bash
# Runs every check of the project on a fresh machine: installs what the tests need (PostgreSQL,
# etcd, protoc), then formatting, lints, and all tests (unit, integration, benches in test mode).
# The tests start their own PostgreSQL and etcd processes on private sockets and free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# setup.sh installed Chromium: the browser test must run, not skip.
export TASKQUEUE_REQUIRE_BROWSER=1
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test" >&2
# Most integration tests wait on I/O: run more of them at once than there are cores.
cargo test --lib --bins --tests --locked --no-fail-fast -- --test-threads "${TASKQUEUE_TEST_THREADS:-6}"
echo "== benches, once each in test mode" >&2
cargo test --benches --locked --no-fail-fast
