#!/usr/bin/env bash
# The one-host lab of the edge benchmarks (proxy_bench.py, stream_bench.py, open_streams.py and
# scaleout.py --lab): a Debian 12 systemd container holding every group, converged with
# playbooks/site.yml and the inventory bench/lab (inventories/local's settings, rate limit raised).
#   bench/lab.sh up [NAME]     start NAME (default $MCPOPS_BENCH_LAB, else mcpops-bench-lab) and converge
#   bench/lab.sh down [NAME]   remove the container
# Needs PATH with the project's .venv, ANSIBLE_CONFIG, ANSIBLE_COLLECTIONS_PATH and MCPOPS_LAB_DIR as
# for make demo. A fresh converge takes about 3 minutes; a second `up` re-runs it (no changes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cmd=${1:?usage: bench/lab.sh up|down [NAME]}
name=${2:-${MCPOPS_BENCH_LAB:-mcpops-bench-lab}}
case "$cmd" in
  up)
    "$repo/scripts/lab-host" "$name" >/dev/null
    log=${MCPOPS_LAB_DIR:-$repo/.lab}/bench-lab-$name.log
    echo "converging $name (log: $log)"
    if ! MCPOPS_BENCH_LAB=$name ansible-playbook -i "$here/lab" "$repo/playbooks/site.yml" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "lab.sh: the converge of $name failed; full output in $log" >&2
      exit 1
    fi
    tail -n 3 "$log"
    echo "lab ready: export MCPOPS_BENCH_LAB=$name"
    ;;
  down)
    docker rm -f "$name" >/dev/null 2>&1 || true
    echo "removed $name"
    ;;
  *)
    echo "usage: bench/lab.sh up|down [NAME]" >&2
    exit 2
    ;;
esac
