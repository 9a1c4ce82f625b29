#!/usr/bin/env bash
# The lab of log_shipping and log_collector: containers h2-ship, h2-coll (and h2-fresh for check
# mode) on network h2-net, a throwaway CA, converge, a second run that must change nothing, check
# mode on a fresh host, then the behaviour tests of molecule/cluster/tests/test_logs.py pointed at
# the lab's hosts. KEEP=1 leaves the containers running. IMAGE=mcpops/debian13:latest for Debian 13.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
export PATH=$repo/.venv/bin:/work/main/.venv/bin:$PATH
export ANSIBLE_CONFIG=$repo/ansible.cfg ANSIBLE_COLLECTIONS_PATH=$repo/.cache/collections
image=${IMAGE:-mcpops/debian12:latest}
hosts=(h2-ship h2-coll h2-fresh)
export H2_LAB_PKI=${H2_LAB_PKI:-$(mktemp -d)}

cleanup() {
  [[ ${KEEP:-0} == 1 ]] && return
  docker rm -f "${hosts[@]}" >/dev/null 2>&1 || true
  docker network rm h2-net >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker network inspect h2-net >/dev/null 2>&1 || docker network create h2-net >/dev/null
for h in "${hosts[@]}"; do
  docker rm -f "$h" >/dev/null 2>&1 || true
  docker run -d --name "$h" --hostname "$h" --network h2-net --cgroupns host \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    "$image" /lib/systemd/systemd >/dev/null
done
"$here/lab_ca.sh" "$H2_LAB_PKI" "${hosts[@]}"

run() { ansible-playbook -i "$here/inventory.yml" "$here/lab.yml" "$@"; }

echo "== check mode on a fresh host"
run --limit h2-fresh --check | tee /tmp/h2-check.log
grep -Eq 'h2-fresh +: ok=[0-9]+ +changed=[0-9]+ +unreachable=0 +failed=0' /tmp/h2-check.log

echo "== converge"
run --limit shippers
echo "== second run: nothing may change"
run --limit shippers | tee /tmp/h2-idem.log
grep -E '^h2-(ship|coll) ' /tmp/h2-idem.log
! grep -E '^h2-(ship|coll) ' /tmp/h2-idem.log | grep -vq 'changed=0 '

echo "== behaviour"
MCPOPS_LOGS_SHIPPER=h2-ship MCPOPS_LOGS_COLLECTOR=h2-coll MCPOPS_LOGS_LB=h2-ship \
  MCPOPS_LOGS_EXPECT="h2-ship/mcpops-server h2-ship/nginx h2-coll/mcpops-server" \
  python -m pytest -p no:cacheprovider -v "$repo/molecule/cluster/tests/test_logs.py" ${PYTEST_ARGS:-}
