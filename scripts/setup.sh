#!/usr/bin/env bash
# Installs what taskqueue needs on a Debian/Ubuntu machine, idempotently: a C toolchain (ring and
# other crates compile C; rustup's toolchain links with `cc`), PostgreSQL server binaries (the
# embedded database of `serve` and of the tests), etcd (leadership tests), protoc and the well-known
# `.proto` includes (etcd-client's build script needs both: Debian's protobuf-compiler ships no
# google/protobuf/*.proto, libprotobuf-dev does), Prometheus and haproxy (deploy/monitoring checks
# and the deploy/local cluster test), busybox (the builtins are tested in busybox sh), curl, and
# Chromium with Node.js and npm (tests/it/browser.rs builds a page with npm and runs it in headless
# Chromium; npm ships inside some Node.js builds, so it is only installed when missing).
# Skips anything already present. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
have_postgres() {
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1
}
have_postgres || missing+=(postgresql)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v busybox >/dev/null 2>&1 || missing+=(busybox)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
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
  if command -v systemctl >/dev/null 2>&1; then
    # Only the binaries are wanted (deploy/local runs its own instances on its own ports); the
    # Prometheus service would also hold port 9090, our default metrics port.
    for service in prometheus haproxy; do
      if [[ " ${missing[*]} " == *" $service "* ]]; then
        "${as_root[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
