#!/bin/sh
# Enable the unit; start (or restart, on an upgrade) it once the signing key is in place.
set -e
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  systemctl enable bansshee-agent.service || true
  if [ -s /etc/bansshee/keys.pub ]; then
    systemctl restart bansshee-agent.service || true
  else
    echo "bansshee-agent: put the controller's public key in /etc/bansshee/keys.pub, then: systemctl start bansshee-agent"
  fi
fi
exit 0
