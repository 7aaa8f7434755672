#!/usr/bin/env bash
# Installs what taskqueue needs on a Debian/Ubuntu machine, idempotently: PostgreSQL server binaries
# (the embedded database of `serve` and of the tests), etcd (leadership tests) and protoc (etcd-client's
# build). Skips anything already present. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
have_postgres() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1
}
have_postgres || missing+=(postgresql)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "${TASKQUEUE_SETUP_EXTRA:-}" != "" ]; then
  for pkg in $TASKQUEUE_SETUP_EXTRA; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "setup: please install as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
