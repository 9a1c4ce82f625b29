#!/usr/bin/env bash
# make demo: the whole stack in one local Debian 12 systemd container, then a real MCP call.
# Running it again reuses the container; the playbook then reports no changes.
set -euo pipefail
cd "$(dirname "$0")/.."
export MCPOPS_LAB_DIR=${MCPOPS_LAB_DIR:-$PWD/.lab}
HOST=mcpops-demo
PORT=${MCPOPS_DEMO_PORT:-8443}

scripts/lab-host "$HOST" mcpops/debian12:latest -p "127.0.0.1:$PORT:443" >/dev/null
python -m mcpops_server.devissuer init "$MCPOPS_LAB_DIR/issuer" >/dev/null

echo "demo: deploying playbooks/site.yml to the container $HOST (inventories/local)"
log=$MCPOPS_LAB_DIR/demo-converge.log
if ! ansible-playbook -i inventories/local playbooks/site.yml >"$log" 2>&1; then
  tail -n 60 "$log"
  echo "demo: the playbook failed; full output in $log" >&2
  exit 1
fi
grep -A3 '^PLAY RECAP' "$log" | sed 's/^/demo: /'

url="https://localhost:$PORT/mcp"
echo "demo: MCP endpoint $url (CA: $MCPOPS_LAB_DIR/ca/ca.crt, public name mcp.mcpops.test)"
python scripts/demo_client.py "$url" --ca "$MCPOPS_LAB_DIR/ca/ca.crt" \
  --token-dir "$MCPOPS_LAB_DIR/issuer" --aud https://mcp.mcpops.test/mcp

# Where to look next: Prometheus (loopback of the container; every target of the inventory, plain
# on one host) and the logs the host shipped to its own collector.
# The first scrapes come within one interval of the converge: wait for them (at most 60 s).
targets=unknown
for _ in $(seq 30); do
  targets=$(docker exec "$HOST" curl -sS --max-time 5 'http://127.0.0.1:9090/api/v1/targets?state=active' \
    | python -c 'import json,sys; t=json.load(sys.stdin)["data"]["activeTargets"]; print(sum(x["health"]=="up" for x in t), "of", len(t))' \
    2>/dev/null || echo unknown)
  case $targets in unknown|"0 of 0") ;; *) [ "${targets%% *}" = "${targets##* }" ] && break ;; esac
  sleep 2  # pacing between polls; the loop's bound is the deadline
done
echo "demo: Prometheus in $HOST at http://127.0.0.1:9090 (targets up: $targets); open it with"
echo "demo:   docker exec $HOST curl -s 'http://127.0.0.1:9090/api/v1/alerts'"
echo "demo: shipped logs (one JSON file per host and service) in $HOST under /var/log/mcpops/:"
docker exec "$HOST" sh -c 'ls -1 /var/log/mcpops/*/*.json' | sed 's/^/demo:   /'
echo "demo:   docker exec $HOST tail -n 3 /var/log/mcpops/$HOST/mcpops-server.json"
