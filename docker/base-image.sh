#!/usr/bin/env bash
# Make sure the engine at $DOCKER_HOST has a `python:3.11-slim` image.
#
# Nothing can be pulled on CI, so when the image is missing this builds a stand-in: Debian
# minbase plus python3, python3-venv, python3-pip and ca-certificates, bootstrapped with
# debootstrap from the mirror and suite of this machine's apt sources, trusting this machine's
# extra CA certificates (pip inside `docker build` goes through the same TLS proxy as the host),
# then `docker import`ed under the real image's name. The same Dockerfile works on both: it
# only needs `python3 -m venv`.
#
# Usage: docker/base-image.sh WORKDIR
#   WORKDIR                    scratch space (the rootfs is built there)
#   CNNSERVE_DOCKER_CACHE      optional persistent folder; the rootfs tarball and the .debs are
#                              kept there so a second run skips debootstrap (unset: no cache)
set -euo pipefail

IMAGE=python:3.11-slim
workdir=${1:?usage: $0 WORKDIR}
cache=${CNNSERVE_DOCKER_CACHE:-}
docker=${DOCKER:-docker}

log() { printf '[base-image] %s\n' "$*" >&2; }

if $docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE is present"
  exit 0
fi

# The first plain Debian archive in this machine's apt sources, one-line or deb822 format:
# prints "MIRROR SUITE". Security and -updates suites are skipped: debootstrap wants the base.
apt_source() {
  local files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 1
  awk '
    function emit(uri, suite) {
      if (!found && uri ~ /debian/ && uri !~ /security/ && suite !~ /-/) { print uri, suite; found = 1 }
    }
    # deb822 format: one paragraph per source, ended by a blank line or the end of the file
    function flush(  u, s) {
      if (types ~ /(^|[ \t])deb([ \t]|$)/) for (u in uris) for (s in suites) emit(uris[u], suites[s])
      types = ""; delete uris; delete suites
    }
    FNR == 1 { flush() }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    # one-line format: deb [options] URI SUITE COMPONENTS...
    $1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      emit($(i), $(i + 1)); next
    }
    tolower($1) == "types:"  { types = $0 }
    tolower($1) == "uris:"   { for (j = 2; j <= NF; j++) uris[j] = $j }
    tolower($1) == "suites:" { for (j = 2; j <= NF; j++) suites[j] = $j }
    END { flush() }
  ' "${files[@]}" | head -n 1
}

read -r mirror suite < <(apt_source) || true
if [ -z "${mirror:-}" ] || [ -z "${suite:-}" ]; then
  log "no Debian mirror found in /etc/apt/sources.list{,.d}"
  exit 1
fi

certs=()
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] && certs+=("$crt")
done
# The cached tarball is only reused for the same suite and the same extra certificates.
key=$( { echo "$mirror $suite"; cat "${certs[@]+"${certs[@]}"}" /dev/null; } | sha256sum | cut -c1-12)
tarball="$workdir/rootfs.tar"
if [ -n "$cache" ] && [ -f "$cache/python-3.11-slim-$suite-$key.tar" ]; then
  log "importing the cached stand-in rootfs from $cache"
  tarball="$cache/python-3.11-slim-$suite-$key.tar"
else
  rootfs="$workdir/rootfs"
  mkdir -p "$rootfs"
  debs=()
  if [ -n "$cache" ]; then
    mkdir -p "$cache/debs"
    debs=(--cache-dir="$cache/debs")
  fi
  log "debootstrap $suite from $mirror (minbase + python3, takes a minute or two)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "${debs[@]+"${debs[@]}"}" "$suite" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1 || {
    tail -n 30 "$workdir/debootstrap.log" >&2
    exit 1
  }
  if [ ${#certs[@]} -gt 0 ]; then
    cp "${certs[@]}" "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  # What the real slim image also leaves out: docs, man pages, apt's package lists and debs.
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -cf "$tarball" .
  rm -rf "$rootfs"
  if [ -n "$cache" ]; then
    cp "$tarball" "$cache/python-3.11-slim-$suite-$key.tar.partial"
    mv "$cache/python-3.11-slim-$suite-$key.tar.partial" "$cache/python-3.11-slim-$suite-$key.tar"
  fi
fi

# Debian's python3 is the suite's (3.11 on bookworm); LANG and PATH as the real image sets them.
$docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "stand-in for $IMAGE: debootstrap $suite minbase + python3 ($mirror)" \
  - "$IMAGE" <"$tarball" >/dev/null
log "imported $IMAGE: $($docker run --rm "$IMAGE" python3 --version 2>&1)"
