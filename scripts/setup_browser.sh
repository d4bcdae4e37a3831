#!/usr/bin/env bash
# The HTML report is checked in a real headless browser: Debian's chromium. Installs it when missing
# and this machine can (root with apt-get); otherwise says that those tests will be skipped.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the report's browser tests (about a minute) ..."
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; then
        exit 0
    fi
fi
echo "note: /usr/bin/chromium is not installed and could not be installed here; the browser tests will be skipped" >&2
exit 0
