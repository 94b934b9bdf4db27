#!/usr/bin/env bash
# The Debian packages the demo and the lab tests need, installed when any is missing.
# One list, used by `make demo`, `make test` and .ci/run. Needs root (the lab does too).
set -euo pipefail

packages=(dnsmasq-base dnsutils tcpdump iproute2 iptables dnsperf tshark libcap2-bin util-linux
          python3-venv make git ca-certificates)
# The commands that show those packages are present (dpkg names differ from tool names).
tools=(dnsmasq dig tcpdump ip iptables dnsperf tshark capsh setpriv)

missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${1:-}" != "--force" ] && [ ${#missing[@]} -eq 0 ] && command -v kubectl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]:-kubectl}. Install as root on Debian/Ubuntu: apt-get install ${packages[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer it before apt does.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
if ! command -v kubectl >/dev/null 2>&1; then
    # The plugin tests run the real kubectl; Debian's own build is old but finds plugins.
    apt-get install -y -q --no-install-recommends kubernetes-client
fi
