#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when they are missing and we may install them:
# debootstrap builds the Debian 12 root filesystem that kubeadm_node's molecule scenario runs against.
# Without root (or apt), the tests that need it skip and say why.
set -u
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${need[*]} and cannot install (not root or no apt); dependent tests will skip" >&2
  exit 0
fi
echo "system-packages: installing ${need[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; } \
  || echo "system-packages: could not install ${need[*]}; dependent tests will skip" >&2
