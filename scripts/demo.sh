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
