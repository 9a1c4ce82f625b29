#!/usr/bin/env bash
# Prepare this machine for `make demo` and `make test`:
#   1. a Python virtualenv in .venv with the dev extra (ansible, molecule, linters, the server);
#   2. the Debian packages the tests need on the controller (docker engine, debootstrap, redis);
#   3. a running Docker engine (this machine has no systemd, so dockerd is started by hand);
#   4. local systemd base images for Debian 12 and 13 (no registry is reachable), made with
#      debootstrap from the Debian mirror in this machine's apt sources (scripts/debian_mirror.sh).
# Every step is skipped when its result is already there, so a second run takes seconds.
# A step that cannot be done stops the script with one line saying which and why.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

die() { echo "setup: $*" >&2; exit 1; }
step() { [ -n "${SETUP_QUIET:-}" ] || echo "setup: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and starts dockerd); rerun with sudo"
avail_kb=$(df -Pk "$ROOT" | awk 'NR==2 {print $4}')
[ "${avail_kb:-0}" -gt 3000000 ] || die "less than 3 GB free on $(df -P "$ROOT" | awk 'NR==2 {print $6}'); free some space first"

# --- 1. Debian packages on the controller -------------------------------------------------
need_pkgs=()
for pair in dockerd:docker.io debootstrap:debootstrap redis-server:redis-server openssl:openssl testssl:testssl.sh bwrap:bubblewrap nginx:nginx nft:nftables; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need_pkgs+=("${pair#*:}")
done
# njs for nginx (the principal-affinity tests run the role's nginx.conf in a real nginx)
[ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || need_pkgs+=(libnginx-mod-http-js)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and no apt-get to install them"
  step "installing ${need_pkgs[*]}"
  apt-get update -qq >/tmp/mcpops-apt.log 2>&1 || die "apt-get update failed (see /tmp/mcpops-apt.log)"
  # The packages' services (nginx, redis) must not start on the controller: tests start their own.
  policy_made=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_made=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" \
    >>/tmp/mcpops-apt.log 2>&1 || { [ -z "$policy_made" ] || rm -f /usr/sbin/policy-rc.d
    die "apt-get install ${need_pkgs[*]} failed (see /tmp/mcpops-apt.log)"; }
  [ -z "$policy_made" ] || rm -f /usr/sbin/policy-rc.d
fi

# --- 2. virtualenv --------------------------------------------------------------------------
PY=${PYTHON:-python3}
stamp=.venv/.mcpops-installed
want=$(sha256sum <pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  command -v "$PY" >/dev/null || die "no $PY on PATH; install Python 3.11 or newer"
  step "creating .venv and installing the dev extra (a minute on a fresh machine)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv || die "python3 -m venv failed (apt-get install python3-venv?)"
  .venv/bin/pip install -q --upgrade pip >/tmp/mcpops-pip.log 2>&1 || die "pip upgrade failed (see /tmp/mcpops-pip.log)"
  .venv/bin/pip install -q -e '.[dev]' >>/tmp/mcpops-pip.log 2>&1 || die "pip install -e .[dev] failed (see /tmp/mcpops-pip.log)"
  echo "$want" >"$stamp"
fi

# --- 3. Docker engine ----------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then
    rm -f /var/run/docker.pid   # left behind by a dockerd that was killed without a clean stop
    step "starting dockerd"
    setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s (see /var/log/dockerd.log)"
fi

# --- 4. base images --------------------------------------------------------------------------
# debootstrap fetches from the Debian mirror this machine's apt already uses (or from
# MCPOPS_DEBIAN_MIRROR): scripts/debian_mirror.sh reads it, and says so in one line when there is none.
mirror=
for spec in 12:bookworm 13:trixie; do
  ver=${spec%%:*}; suite=${spec#*:}; image="mcpops/debian$ver:latest"
  docker image inspect "$image" >/dev/null 2>&1 && continue
  [ -n "$mirror" ] || mirror=$(bash scripts/debian_mirror.sh) || exit 1
  step "building $image with debootstrap (about a minute)"
  dir=$(mktemp -d /var/tmp/mcpops-rootfs.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,iproute2,procps,curl \
    "$suite" "$dir" "$mirror" >/tmp/mcpops-debootstrap-"$ver".log 2>&1 \
    || die "debootstrap $suite failed (see /tmp/mcpops-debootstrap-$ver.log)"
  # A container has no consoles and no kernel modules to load: mask what only fails there.
  chroot "$dir" systemctl mask getty@tty1.service systemd-udevd.service systemd-modules-load.service \
    sys-kernel-config.mount sys-kernel-debug.mount >/dev/null 2>&1 || true
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' - "$image" >/dev/null \
    || die "docker import of $image failed"
  rm -rf "$dir"; trap - EXIT
done
# --- 5. the repository as the collection mcpops.deploy ---------------------------------------
# ansible.cfg and molecule look for collections in .cache/collections; linking the checkout there
# lets playbooks call mcpops.deploy.<role> from the working tree as users do from an install.
link=.cache/collections/ansible_collections/mcpops/deploy
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  mkdir -p "$(dirname "$link")" && ln -sfn "$ROOT" "$link"
fi
step "ready"
