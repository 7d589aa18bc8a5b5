#!/usr/bin/env bash
# Sets up what the web console's browser tests (tests/browser.rs) drive: Debian's headless
# `chromium` and a Python virtual environment with Playwright (from PyPI) that drives it.
# Playwright's own browser download (`playwright install`) is never used: the tests launch
# /usr/bin/chromium. Idempotent, and quick once done (a stamp records the pinned version).
#
# Usage: resources/web/setup-browser.sh
# Prints: the virtual environment's python on the last line of stdout.
# Env:   MINIVMM_BROWSER_VENV  where the virtual environment goes
#                               (default ~/.cache/minivmm/browser-venv)
# Exit:  0 ready, 2 something could not be installed (the reason is printed).
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${MINIVMM_BROWSER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/minivmm/browser-venv}
STAMP="$VENV/.minivmm-playwright-$PLAYWRIGHT_VERSION"

say() { echo "setup-browser.sh: $*" >&2; }

# Test processes may run this at the same time (nextest): one sets up, the others wait.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

# Chromium and a font: the same packages (and the same installer) as the chart check.
bash "$ROOT/resources/bench/check-charts.sh" --install-only || exit 2

if [ ! -e "$STAMP" ] || [ ! -x "$VENV/bin/python" ]; then
	py=$(command -v python3 || true)
	[ -n "$py" ] || { say "python3 not found (apt-get install python3 python3-venv)"; exit 2; }
	if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
		say "installing python3-venv"
		SUDO=
		[ "$(id -u)" = 0 ] || SUDO=sudo
		export DEBIAN_FRONTEND=noninteractive
		$SUDO apt-get update -q >&2
		$SUDO apt-get install -y -q --no-install-recommends python3-venv >&2 ||
			{ say "could not install python3-venv"; exit 2; }
	fi
	say "creating $VENV with playwright $PLAYWRIGHT_VERSION"
	rm -rf "$VENV"
	"$py" -m venv "$VENV" >&2 || { say "python3 -m venv $VENV failed"; exit 2; }
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
		"playwright==$PLAYWRIGHT_VERSION" >&2 ||
		{ say "pip install playwright==$PLAYWRIGHT_VERSION failed"; rm -rf "$VENV"; exit 2; }
	touch "$STAMP"
fi
echo "$VENV/bin/python"
