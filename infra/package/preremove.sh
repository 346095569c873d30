#!/bin/sh
# On removal (not on an upgrade, which keeps the bans in the kernel): stop the agent and remove
# its chains, jumps, sets and state file, and nothing else.
# deb: $1 is remove | purge | upgrade | deconfigure; rpm: $1 is 0 on erase, 1 on upgrade.
set -e
case "$1" in
  remove|purge|deconfigure|0)
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now bansshee-agent.service || true
    fi
    /usr/bin/bansshee-agent uninstall || echo "bansshee-agent: uninstall failed; run it by hand" >&2
    ;;
esac
exit 0
