#!/usr/bin/env bash
# Build (once) a Debian 12 root filesystem for the kubeadm_node molecule scenario, into a cache folder.
# Usage: build_rootfs.sh <cache-dir>
#   AGENTKUBE_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
# The build goes to <cache-dir>.partial and is renamed at the end, so an interrupted build is never reused.
set -euo pipefail
cache_dir=${1:?usage: build_rootfs.sh <cache-dir>}
mirror=${AGENTKUBE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3 + python3-apt: Ansible modules inside the chroot; python3-yaml: the lab kubeadm emulator;
# containerd, kmod, procps: what the role manages on a real worker.
packages=python3,python3-apt,python3-yaml,containerd,kmod,procps,iproute2,ca-certificates,gpg,curl

if [ -x "$cache_dir/usr/bin/python3" ]; then
  echo "reusing $cache_dir"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
partial="$cache_dir.partial"
rm -rf "$partial"
mkdir -p "$(dirname "$cache_dir")"
debootstrap --variant=minbase --include="$packages" bookworm "$partial" "$mirror"
# Keep the cache small: downloaded .debs are not needed once installed.
rm -f "$partial"/var/cache/apt/archives/*.deb
mv "$partial" "$cache_dir"
echo "built $cache_dir"
