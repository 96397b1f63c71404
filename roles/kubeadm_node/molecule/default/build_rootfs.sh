#!/usr/bin/env bash
# Build (once) a Debian 12 root filesystem for the kubeadm_node molecule scenario, into a cache folder.
# Usage: build_rootfs.sh <cache-dir>
#   AGENTKUBE_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
# The build goes to <cache-dir>.partial and is renamed at the end, so an interrupted build is never reused.
set -euo pipefail
cache_dir=${1:?usage: build_rootfs.sh <cache-dir>}
mirror=${AGENTKUBE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3 + python3-apt: Ansible modules on the worker; python3-yaml: the lab kubeadm emulator;
# containerd, kmod, procps: what the role manages on a real worker; openssh-server, sudo: what a cloud image
# carries for cloud-init's user (the lab boots each worker VM with its own sshd, reached over SSH with become).
packages=python3,python3-apt,python3-yaml,containerd,kmod,procps,iproute2,ca-certificates,gpg,curl,openssh-server,sudo
# The files a complete build has (agentkube_lab.vm_guest_os.ROOTFS_MARKERS); a cache without one of them is rebuilt.
markers=(usr/bin/python3 usr/sbin/sshd usr/bin/sudo)

complete=yes
for m in "${markers[@]}"; do [ -e "$cache_dir/$m" ] || complete=no; done
if [ $complete = yes ]; then
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
# No host keys in the image: each VM's cloud-init makes its own at first boot (the lab does it as cloud-init would).
rm -f "$partial"/etc/ssh/ssh_host_*
rm -rf "$cache_dir"
mv "$partial" "$cache_dir"
echo "built $cache_dir"
