#!/usr/bin/env bash
# Checks that the README's two commands work on a truly fresh machine: builds a pristine Debian 12
# (bookworm, minbase) root with debootstrap, copies this checkout in (tracked and untracked files,
# not target/ nor data folders), bind-mounts the host's Rust toolchain read-only, then runs, inside
# the chroot, `scripts/setup.sh` and `cargo build --locked --all-targets`. Nothing of the host but
# the toolchain (and the network to the package registries) is visible to the build.
#
# Too slow for every CI run (a cold build of every target, ~10-15 min on 2 cores): run it whenever
# scripts/setup.sh or the dependency list changes. Needs root (debootstrap, chroot, mount).
#
#   scripts/fresh-check.sh            # build the root, check, remove the root
#   scripts/fresh-check.sh --keep     # keep the root afterwards (its path is printed)
#   FRESH_CHECK_MIRROR=http://…       # Debian mirror (default: the host's, else deb.debian.org)
#
# The packages debootstrap downloads are cached in /var/cache/taskqueue-fresh-check/ so a second
# run does not download them again; the root itself is always new.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)

keep=false
for arg in "$@"; do
  case "$arg" in
    --keep) keep=true ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "fresh-check: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check: needs root (debootstrap, chroot, bind mounts)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "fresh-check: installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# The toolchain the host would use for this checkout: its real bin/ folder, not rustup's proxies
# (they would need a writable RUSTUP_HOME).
rustc_path=$(rustup which rustc 2>/dev/null || command -v rustc)
toolchain=$(cd "$(dirname "$rustc_path")/.." && pwd)
[ -x "$toolchain/bin/cargo" ] || { echo "fresh-check: no cargo beside $rustc_path" >&2; exit 1; }

mirror=${FRESH_CHECK_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^URIs: *http[^ ]*/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')
  mirror=${mirror:-http://deb.debian.org/debian}
fi

# A new, unpredictable folder that only root can enter (never a fixed /tmp path).
root=$(mktemp -d /var/tmp/taskqueue-fresh.XXXXXXXX)
# A system root must be traversable by its own service users (postgres runs initdb at install).
chmod 0755 "$root"
mounts=()
cleanup() {
  local status=$?
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if $keep; then
    echo "fresh-check: root kept in $root" >&2
  else
    rm -rf --one-file-system "$root"
  fi
  exit $status
}
trap cleanup EXIT

cache=/var/cache/taskqueue-fresh-check
mkdir -p "$cache"
tarball=$cache/bookworm-minbase.tgz
echo "fresh-check: debootstrap bookworm (minbase) into $root" >&2
if [ ! -s "$tarball" ]; then
  debootstrap --variant=minbase --make-tarball="$tarball.part" bookworm "$root/.tarball" "$mirror" >"$cache/make-tarball.log" 2>&1 \
    || { tail -20 "$cache/make-tarball.log" >&2; exit 1; }
  mv "$tarball.part" "$tarball"
  rm -rf "$root/.tarball"
fi
debootstrap --variant=minbase --unpack-tarball="$tarball" bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 \
  || { tail -20 "$root.debootstrap.log" >&2; rm -f "$root.debootstrap.log"; exit 1; }
rm -f "$root.debootstrap.log"

# Services must not start inside the chroot (postgresql's and etcd's postinst try to).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The registries may be reached through this host's TLS proxy: its CA bundle is the one thing of
# the host's network set-up the chroot needs (a property of the network, not of the machine).
host_ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
ca_env=()
if [ -s "$host_ca" ]; then
  mkdir -p "$root/etc/ssl/host"
  cp "$host_ca" "$root/etc/ssl/host/ca-bundle.crt"
  ca_env=(SSL_CERT_FILE=/etc/ssl/host/ca-bundle.crt CARGO_HTTP_CAINFO=/etc/ssl/host/ca-bundle.crt)
fi
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"

bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts" 2>/dev/null && mounts+=("$root/dev/pts") || true
bind "$toolchain" "$root/opt/rust" ro

echo "fresh-check: copying the checkout (tracked and untracked files, as git sees them)" >&2
mkdir -p "$root/src/taskqueue"
git -C "$checkout" ls-files -z --cached --others --exclude-standard \
  | (cd "$checkout" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
  | tar -C "$checkout" --null -T - -cf - | tar -C "$root/src/taskqueue" -xf -

echo "fresh-check: scripts/setup.sh then cargo build --locked --all-targets, inside the chroot" >&2
chroot "$root" /usr/bin/env -i \
  HOME=/root PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  CARGO_HOME=/root/.cargo CARGO_TERM_COLOR=never LANG=C.UTF-8 \
  "${ca_env[@]}" \
  /bin/bash -c 'set -euo pipefail
    cd /src/taskqueue
    ./scripts/setup.sh
    cargo build --locked --all-targets'
echo "fresh-check: PASS: setup.sh and cargo build --locked --all-targets work on a pristine Debian 12 root" >&2
