#!/usr/bin/env bash
# The floor of a one-host deploy: the same work as playbooks/site.yml on a fresh Debian host, done
# by hand with no Ansible, no templates and no checks. bench/converge.py copies this script and the
# release's wheelhouse tarball into a fresh lab container and times
#     docker exec CONTAINER bash /tmp/floor.sh /tmp/wheelhouse.tar
# It is not a working MCP endpoint (no TLS, no auth, no firewall rules of ours): only the package
# installs, the virtualenv and the service starts that a deploy cannot avoid.
set -euo pipefail
tarball=${1:?usage: floor.sh WHEELHOUSE_TAR [PORT]}
port=${2:-8000}

# The Debian packages the roles install (their vars files, roles/<role>/vars/, which each role hands
# to roles/common/tasks/packages.yml):
#   firewall    __firewall_packages       nftables
#   redis       __redis_package(s)        redis-server
#   mcp_server  __mcp_server_os_packages  python3 python3-venv
#   nginx       __nginx_packages          nginx openssl python3-cryptography (+ certbot for ACME only)
#   pki                                   ssl-cert openssl python3-cryptography
#   log_shipping, log_collector           rsyslog rsyslog-relp logrotate
#   exporters                             prometheus-node-exporter prometheus-nginx-exporter
#                                         prometheus-redis-exporter
#   monitoring                            prometheus prometheus-alertmanager
# bench/converge.py compares the packages dpkg lists on the converged host with those on this one
# and warns when they differ. Like the roles' one apt task (roles/common/tasks/packages.yml,
# install_recommends: false), recommended packages are left out.
PACKAGES=(nftables redis-server python3 python3-venv nginx openssl python3-cryptography ssl-cert
  rsyslog rsyslog-relp logrotate prometheus-node-exporter prometheus-nginx-exporter
  prometheus-redis-exporter prometheus prometheus-alertmanager)

export DEBIAN_FRONTEND=noninteractive

# Debian's redis-server.service cannot start in these containers (PrivateUsers=yes together with
# ProtectProc=invisible fails with 217/USER); like the redis role, reset PrivateUsers before the
# package's postinst starts the service.
mkdir -p /etc/systemd/system/redis-server.service.d
printf '[Service]\nPrivateUsers=no\n' >/etc/systemd/system/redis-server.service.d/floor.conf
systemctl daemon-reload

apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

# The release: wheelhouse unpacked beside a fresh virtualenv, installed offline from the lock.
release=/opt/floor/release
mkdir -p "$release/wheelhouse"
tar -C "$release/wheelhouse" -xf "$tarball"
python3 -m venv "$release/venv"
"$release/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-index \
  --find-links "$release/wheelhouse/wheels" -r "$release/wheelhouse/lock.txt"

# One instance under a minimal unit. Type=notify: the server sends READY=1 once it listens, so
# `systemctl start` returns only when the instance is up.
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin floor 2>/dev/null || true
cat >/etc/systemd/system/floor-mcp@.service <<EOF
[Unit]
Description=floor MCP instance on port %i
After=network-online.target redis-server.service

[Service]
Type=notify
NotifyAccess=main
User=floor
StateDirectory=floor-mcp
WorkingDirectory=/var/lib/floor-mcp
Environment=MCP_SERVER_PORT=%i
Environment=MCP_SERVER_HOST=127.0.0.1
Environment=AUTH_ENABLED=false
Environment=REDIS_URL=redis://127.0.0.1:6379/0
ExecStart=$release/venv/bin/mcpops-server serve
EOF
systemctl daemon-reload

systemctl start redis-server nginx nftables "floor-mcp@$port"
for _ in $(seq 1 120); do
  if systemctl is-active --quiet "floor-mcp@$port"; then
    exit 0
  fi
  sleep 0.25
done
echo "floor: floor-mcp@$port did not become active" >&2
systemctl status --no-pager "floor-mcp@$port" >&2 || true
exit 1
