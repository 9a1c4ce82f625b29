#!/bin/sh
# mcpops cert-expiry OUT_DIR CERT...
# Writes OUT_DIR/mcpops_tls_cert.prom for node exporter's textfile collector: the notAfter time of
# each certificate, as mcpops_tls_cert_not_after_seconds{path="..."} (seconds since the epoch).
# Absent files are skipped; a file that is present but cannot be read or parsed is reported as 0,
# so that the expiry alert fires for it instead of the series silently vanishing.
# The file is written to a temporary name in the same directory and renamed: node exporter never
# reads half a file.
set -eu
out_dir=$1
shift
tmp=$(mktemp "$out_dir/.mcpops_tls_cert.prom.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
    echo '# HELP mcpops_tls_cert_not_after_seconds Expiry time (notAfter) of a certificate, seconds since the epoch.'
    echo '# TYPE mcpops_tls_cert_not_after_seconds gauge'
    for cert in "$@"; do
        [ -e "$cert" ] || continue
        not_after=0
        if end=$(openssl x509 -noout -enddate -in "$cert" 2>/dev/null); then
            not_after=$(date -u -d "${end#notAfter=}" +%s 2>/dev/null) || not_after=0
        fi
        label=$(printf '%s' "$cert" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
        printf 'mcpops_tls_cert_not_after_seconds{path="%s"} %s\n' "$label" "$not_after"
    done
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out_dir/mcpops_tls_cert.prom"
trap - EXIT
