#!/usr/bin/env bash
# Installs what the tests and the demo need on Debian, when it is missing and we can (root with
# apt-get). Without root it prints the one command to run and exits 1. Cheap when nothing is missing.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

# command-or-file : Debian package
pairs=(
  iptables:iptables ipset:ipset ip:iproute2 make:make git:git zip:zip unshare:util-linux
  /usr/sbin/sshd:openssh-server /usr/sbin/dovecot:dovecot-core /usr/lib/dovecot/imap-login:dovecot-imapd
  /usr/sbin/cyrmaster:cyrus-common /usr/lib/cyrus/bin/pop3d:cyrus-pop3d /usr/sbin/saslpasswd2:sasl2-bin
  /usr/lib/x86_64-linux-gnu/sasl2/libplain.so:libsasl2-modules /usr/lib/postfix/sbin/master:postfix
  dockerd:docker.io /bin/busybox:busybox-static nsenter:util-linux
)
need=()
# dynalite (npm) is the second DynamoDB the ledger tests run against: node and npm from Debian.
command -v dynalite >/dev/null 2>&1 || { command -v npm >/dev/null 2>&1 || need+=(nodejs npm); }
for pair in "${pairs[@]}"; do
  thing="${pair%%:*}" pkg="${pair#*:}"
  if [[ "$thing" == /* ]]; then
    # multiarch paths: accept the package's file for any architecture
    if [[ "$thing" == */x86_64-linux-gnu/* ]]; then
      compgen -G "${thing/x86_64-linux-gnu/*-linux-gnu}" >/dev/null && continue
    else
      [ -e "$thing" ] && continue
    fi
  else
    command -v "$thing" >/dev/null 2>&1 && continue
  fi
  need+=("$pkg")
done
install_dynalite() {
  command -v dynalite >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: dynalite missing; install it with: sudo npm install -g dynalite@4.0.0" >&2
    return 1
  fi
  echo "deps: installing dynalite (npm)"
  npm install -g --no-fund --no-audit dynalite@4.0.0 >/dev/null
}
if [ "${#need[@]}" -eq 0 ]; then
  install_dynalite
  exit $?
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing ${need[*]}; install them with:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  exit 1
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests run their own daemons in namespaces: keep the packages' services from starting.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
install_dynalite
