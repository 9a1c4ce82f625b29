#!/usr/bin/env bash
# Print the Debian mirror this controller's apt already uses, for debootstrap in scripts/setup.sh.
#
# No mirror is written into the project: it comes from the machine's own apt configuration, so it
# is whatever the machine is allowed and configured to reach.
#
#   MCPOPS_DEBIAN_MIRROR  when set, printed as it is and nothing is read (the override);
#   MCPOPS_APT_ROOT       a directory to read etc/apt/ from instead of / (for the tests).
#
# Where it looks, first match wins:
#   1. deb822 files, <root>/etc/apt/sources.list.d/*.sources (debian.sources before the others):
#      a stanza that is not "Enabled: no", whose Types has "deb", whose Suites has a plain suite
#      name (no "-security", "-updates", "-backports", no "/"), whose Components has "main";
#      the first of its URIs that does not end in "debian-security";
#   2. one-line entries, <root>/etc/apt/sources.list, then <root>/etc/apt/sources.list.d/*.list:
#      "deb [options] URI suite components", with the same rules for suite, components and URI.
# A "mirror+file:" URI (apt's mirror list method) stands for the first URL listed in that file.
# Only http, https, ftp and file URIs are printed, since those are what debootstrap can fetch from.
#
# Prints one URL and exits 0, or prints one line on stderr and exits 1.
set -euo pipefail

root=${MCPOPS_APT_ROOT:-}
root=${root%/}
apt_dir=$root/etc/apt

# Candidate URIs from deb822 stanzas, in file order, one a line.
deb822_candidates() {
  awk '
    function plain_suite(list,   n, i, s) {
      n = split(list, s, /[ \t]+/)
      for (i = 1; i <= n; i++) if (s[i] ~ /^[A-Za-z0-9][A-Za-z0-9.]*$/) return 1
      return 0
    }
    function has_word(list, word,   n, i, w) {
      n = split(list, w, /[ \t]+/)
      for (i = 1; i <= n; i++) if (w[i] == word) return 1
      return 0
    }
    function flush(   n, i, u) {
      if (has_word(f["types"], "deb") && tolower(f["enabled"]) != "no" \
          && plain_suite(f["suites"]) && has_word(f["components"], "main")) {
        n = split(f["uris"], u, /[ \t]+/)
        for (i = 1; i <= n; i++) if (u[i] != "" && u[i] !~ /debian-security\/*$/) print u[i]
      }
      split("", f); field = ""
    }
    FNR == 1 { flush() }
    /^#/ { next }
    /^[ \t]*$/ { flush(); next }
    /^[ \t]/ { if (field != "") f[field] = f[field] " " $0; next }
    /^[A-Za-z][A-Za-z0-9-]*:/ {
      field = tolower(substr($0, 1, index($0, ":") - 1))
      value = substr($0, index($0, ":") + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", value)
      f[field] = value
      next
    }
    END { flush() }
  ' "$@"
}

# Candidate URIs from one-line entries, in file order, one a line.
one_line_candidates() {
  awk '
    { sub(/#.*/, "") }
    $1 != "deb" { next }
    {
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      uri = $i; suite = $(i + 1); main = 0
      for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
      if (uri != "" && uri !~ /debian-security\/*$/ && suite ~ /^[A-Za-z0-9][A-Za-z0-9.]*$/ && main) print uri
    }
  ' "$@"
}

# The first URL listed in the file an apt "mirror+file:" URI names, or nothing.
first_listed_mirror() {
  local path=${1#mirror+file:}
  path=/${path#"${path%%[!/]*}"}   # mirror+file:/x and mirror+file:///x name the same file
  [ -r "$root$path" ] || return 0
  awk '!/^[ \t]*(#|$)/ { print $1; exit }' "$root$path"
}

debian_mirror() {
  if [ -n "${MCPOPS_DEBIAN_MIRROR:-}" ]; then
    echo "$MCPOPS_DEBIAN_MIRROR"
    return 0
  fi
  local deb822=() one_line=() f uri
  # Debian's own file first: other vendors' repositories often use the same suite names.
  [ -f "$apt_dir/sources.list.d/debian.sources" ] && deb822+=("$apt_dir/sources.list.d/debian.sources")
  for f in "$apt_dir"/sources.list.d/*.sources; do
    [ -f "$f" ] && [ "${f##*/}" != debian.sources ] && deb822+=("$f")
  done
  for f in "$apt_dir"/sources.list "$apt_dir"/sources.list.d/*.list; do
    [ -f "$f" ] && one_line+=("$f")
  done
  while read -r uri; do
    case $uri in
      mirror+file:*) uri=$(first_listed_mirror "$uri") ;;
    esac
    case $uri in
      http://* | https://* | ftp://* | file:/*)
        echo "$uri"
        return 0
        ;;
    esac
  done < <(
    [ ${#deb822[@]} -eq 0 ] || deb822_candidates "${deb822[@]}"
    [ ${#one_line[@]} -eq 0 ] || one_line_candidates "${one_line[@]}"
  )
  echo "setup: no Debian mirror found in $apt_dir/sources.list or $apt_dir/sources.list.d/" \
    "(set MCPOPS_DEBIAN_MIRROR=<url>)" >&2
  return 1
}

debian_mirror
