#!/usr/bin/env bash
# Install openssh-server for `kaisar bench tunnel` (its `ssh -L` baseline) WITHOUT
# starting or enabling the system sshd: the bench runs its own sshd on a loopback port
# with temporary host and user keys. Idempotent; needs root (apt-get).
#
# Usage: scripts/install-sshd.sh
set -euo pipefail

say() { echo "install-sshd.sh: $*" >&2; }

if command -v /usr/sbin/sshd >/dev/null 2>&1 && command -v ssh >/dev/null 2>&1; then
    say "sshd and ssh present ($(/usr/sbin/sshd -V 2>&1 | head -1 || true))"
    exit 0
fi
[ "$(id -u)" = 0 ] || { say "error: needs root to apt-get install openssh-server"; exit 1; }

# policy-rc.d exit 101 = "do not start services" for the package's maintainer scripts.
POLICY=/usr/sbin/policy-rc.d
CREATED=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 0755 "$POLICY"
    CREATED=1
fi
cleanup() { if [ "$CREATED" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
say "apt-get install openssh-server openssh-client (service not started)"
apt-get install -y -q --no-install-recommends openssh-server openssh-client >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends openssh-server openssh-client >&2; }
# Some images start it anyway through a systemd-less invoke-rc.d fallback: stop only
# the system daemon (its pidfile), never other processes.
if [ -s /run/sshd.pid ]; then
    kill "$(cat /run/sshd.pid)" 2>/dev/null || true
fi
/usr/sbin/sshd -V 2>&1 | head -1 >&2 || true
say "done; the bench starts its own sshd, the system service stays off"
