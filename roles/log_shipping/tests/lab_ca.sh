#!/usr/bin/env bash
# A throwaway CA for the lab only, standing in for the pki role: writes DIR/ca.{crt,key} and, per host
# name given, DIR/<host>/host.{crt,key} (serverAuth + clientAuth; names: the host, localhost,
# 127.0.0.1, ::1). Usage: lab_ca.sh DIR HOST...
set -euo pipefail
dir=$1
shift
mkdir -p "$dir"
if [[ ! -s $dir/ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=mcpops lab CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
for host in "$@"; do
  mkdir -p "$dir/$host"
  [[ -s $dir/$host/host.crt ]] && continue
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$dir/$host/host.key" -out "$dir/$host/host.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1,IP:::1" >"$dir/$host/ext"
  openssl x509 -req -sha256 -days 2 -in "$dir/$host/host.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -extfile "$dir/$host/ext" -out "$dir/$host/host.crt" 2>/dev/null
done
