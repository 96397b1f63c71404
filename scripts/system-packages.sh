#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when they are missing and we may install them:
#   debootstrap         the Debian 12 root filesystem of the lab's workers and kubeadm_node's molecule scenario
#   kubernetes-client   kubectl, for `kubectl kustomize deploy/kubernetes`
#   systemd             systemd-analyze, to verify deploy/systemd/agentkube.service
#   buildah, podman, mmdebstrap   to build deploy/container/Containerfile on a base made from Debian packages
#   openssh-client      ssh, ssh-keyscan, ssh-keygen: the playbooks reach the lab's worker VMs over SSH
#   gpg                 signs the lab's Kubernetes apt repository
# Without root (or apt), the tests that need them skip and say why.
set -u
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want debootstrap debootstrap
want kubectl kubernetes-client
want systemd-analyze systemd
want buildah buildah
want podman podman
want mmdebstrap mmdebstrap
want ssh-keyscan openssh-client
want gpg gpg
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${need[*]} and cannot install (not root or no apt); dependent tests will skip" >&2
  exit 0
fi
echo "system-packages: installing ${need[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; } \
  || echo "system-packages: could not install ${need[*]}; dependent tests will skip" >&2
