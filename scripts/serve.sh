#!/usr/bin/env bash
# Runs a taskqueue server from this checkout. With no arguments: a private PostgreSQL in
# ./taskqueue-data, gRPC on 127.0.0.1:50051, metrics on 127.0.0.1:9090/metrics. Arguments go to
# `taskqueue serve` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --quiet --bin taskqueue -- serve "$@"
