#!/usr/bin/env bash
# Installs the Debian packages haagent's tests, lab and demo need. Idempotent: when every
# package is already installed it does nothing (no apt-get update), so a second run is instant.
set -euo pipefail

PACKAGES=(
  # etcd: the coordination store (we start our own members; the packaged service is unused)
  etcd-server etcd-client
  # libvirt-python builds against these
  libvirt-dev pkg-config
  # the lab: real libvirtd + QEMU per host (NOT libvirt-daemon-system: it drags in systemd)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  # namespaces, bridges, veths
  iproute2 util-linux procps
  # fencing: real clients against our fake BMC/PDU, and a real sshd for the ssh plugin
  ipmitool fence-agents openssh-server openssh-client
  # fence_apc_snmp shells out to net-snmp's snmpget/snmpset/snmpwalk
  snmp
  # the lab's Linux guest (`lab up --guest linux`): Debian's kernel and a static busybox, which
  # haagent/lab/guest_image.py packs into an initramfs; cpio checks that archive in the tests
  linux-image-amd64 busybox-static cpio
  # systemd-analyze, to verify deploy/haagent-agent.service. Only the package `systemd`: without
  # systemd-sysv it never becomes init, and policy-rc.d keeps its postinst from starting anything.
  systemd
  # monitoring: promtool checks and unit-tests deploy/prometheus-rules.yml; `lab up --monitoring`
  # runs a real Prometheus and Alertmanager inside the lab (packaged services stay unused)
  prometheus prometheus-alertmanager
  # the stress bench (`make bench BENCH=stress`): CPU and disk load on the lab's machine
  stress-ng
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "haagent: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "haagent: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # NOTE: package postinst scripts try to start etcd/sshd/libvirtd services; with no init system
  # policy-rc.d=101 keeps them from starting daemons on the default ports.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libvirtd refuses to start without the user its default qemu.conf names.
if [[ $(id -u) -eq 0 ]] && ! getent passwd libvirt-qemu >/dev/null; then
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  useradd --system --no-create-home --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
fi
