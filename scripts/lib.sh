# shellcheck shell=bash
# Shared by scripts/demo and scripts/test: install the Debian packages a command needs (as root,
# through apt-get), then make the project's virtualenv .venv with '.[dev]' installed in it.
# Debian 12's python3 refuses pip outside a virtualenv (PEP 668) and has no venv module without
# the python3-venv package, hence both steps.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Debian installs nginx, varnishd and runc's helpers under /usr/sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
VENV="$ROOT/.venv"

# apt_install PACKAGE...: install the missing ones, without starting their services.
apt_install() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$package")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "$0: needs the Debian packages ${missing[*]}: run it as root once" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "$0: installing Debian packages: ${missing[*]}" >&2
  # The tests need the binaries, not the services the packages would start: deny service starts
  # during the install (policy-rc.d exit 101), unless the machine already has a policy.
  local own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$own_policy" ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
}

# ensure_venv: .venv with the project installed editable with its dev extras.
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    # Debian's python3 has ensurepip (hence venv with pip) only with python3-venv.
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  export PATH="$VENV/bin:$PATH"
  export VIRTUAL_ENV="$VENV"
}
