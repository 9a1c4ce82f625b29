#!/usr/bin/env bash
# The monitoring and exporters roles in throwaway containers (prefix h3-, network h3-lab):
# converge, converge again (changed=0), the cluster test suite against them, check mode on a fresh
# host, then everything is removed (KEEP=1 keeps the containers). DISTRO=debian13 for Debian 13.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
DISTRO=${DISTRO:-debian12}
export PATH="$ROOT/.venv/bin:${VENV_BIN:-/work/main/.venv/bin}:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$ROOT/.cache/collections"
export MCPOPS_LAB_DIR="${MCPOPS_LAB_DIR:-$ROOT/.lab/h3-$DISTRO}"
HOSTS=(h3-ops h3-app)

cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        docker rm -f "${HOSTS[@]}" h3-fresh >/dev/null 2>&1 || true
        docker network rm h3-lab >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

start() {
    docker run -d --name "$1" --hostname "$1" --network h3-lab --cgroupns host \
        -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
        --cap-add SYS_ADMIN --cap-add NET_ADMIN \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        "mcpops/$DISTRO:latest" /lib/systemd/systemd >/dev/null
}

docker network inspect h3-lab >/dev/null 2>&1 || docker network create h3-lab >/dev/null
for h in "${HOSTS[@]}"; do docker inspect "$h" >/dev/null 2>&1 || start "$h"; done
mkdir -p "$MCPOPS_LAB_DIR"
python -m mcpops_server.devissuer init "$MCPOPS_LAB_DIR/issuer" --iss https://issuer.mcpops.test >/dev/null

echo "== converge"
ansible-playbook -i "$HERE/inventory.yml" "$HERE/lab.yml" >"$MCPOPS_LAB_DIR/converge.log" 2>&1 \
    || { tail -60 "$MCPOPS_LAB_DIR/converge.log"; exit 1; }
echo "== converge again: nothing may change"
ansible-playbook -i "$HERE/inventory.yml" "$HERE/lab.yml" >"$MCPOPS_LAB_DIR/idempotence.log" 2>&1 \
    || { tail -60 "$MCPOPS_LAB_DIR/idempotence.log"; exit 1; }
if grep -E '^h3-[a-z]+ +: .*changed=[1-9]' "$MCPOPS_LAB_DIR/idempotence.log"; then
    grep -B4 '^changed:' "$MCPOPS_LAB_DIR/idempotence.log"
    exit 1
fi

echo "== tests"
MCPOPS_MONITORING_HOST=h3-ops \
MCPOPS_MONITORING_EXPECTED='{"mcp": 2, "node": 2, "nginx": 1, "redis": 1, "prometheus": 1, "alertmanager": 1}' \
    pytest -q -p no:cacheprovider "$ROOT/molecule/cluster/tests/test_monitoring.py"

echo "== check mode on a fresh host"
start h3-fresh
ansible-playbook -i "$HERE/fresh_inventory.yml" "$HERE/fresh.yml" --check >"$MCPOPS_LAB_DIR/check.log" 2>&1 \
    || { tail -60 "$MCPOPS_LAB_DIR/check.log"; exit 1; }
if docker exec h3-fresh test -e /etc/prometheus; then
    echo "check mode changed the fresh host"
    exit 1
fi
echo "lab passed ($DISTRO)"
