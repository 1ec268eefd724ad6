#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install bufconv into it.
#   scripts/setup.sh         bufconv and its runtime dependencies (enough for `bufconv demo`)
#   scripts/setup.sh --dev   plus the test tools, LeRobot 0.6.1 (the oracle the tests compare against) and gym-hil;
#                            as root on Debian/Ubuntu it also installs libosmesa6 (headless MuJoCo rendering) if missing
#   --verbose (with either): show what pip and apt print (by default only when a step fails)
# Python is looked for in $PYTHON, then python3.14 .. python3.12 on PATH, then pyenv, then uv.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
verbose=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --verbose|-v) verbose=1 ;;
    *) echo "setup: unknown option $arg (expected --dev, --verbose)" >&2; exit 2 ;;
  esac
done

# One line per step; what the tools print (pip's and setuptools' warnings) only when a step
# fails, or with --verbose.
log="$(mktemp -t bufconv-setup.XXXXXX)"
trap 'rm -f "$log"' EXIT
quietly() {
  if [[ $verbose == 1 ]]; then "$@"; return; fi
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: failed: $*" >&2
    return 1
  fi
}

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local candidate
  if [[ -n "${PYTHON:-}" ]] && ok "$PYTHON"; then echo "$PYTHON"; return; fi
  for candidate in python3.14 python3.13 python3.12 python3 python; do
    if command -v "$candidate" >/dev/null && ok "$(command -v "$candidate")"; then command -v "$candidate"; return; fi
  done
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  if command -v pyenv >/dev/null; then root="$(pyenv root)"; fi
  for candidate in $(ls -d "$root"/versions/3.1[2-9]* "$root"/versions/3.[2-9][0-9]* 2>/dev/null | sort -V -r); do
    if ok "$candidate/bin/python"; then echo "$candidate/bin/python"; return; fi
  done
  if command -v uv >/dev/null && uv python find '>=3.12' >/dev/null 2>&1; then uv python find '>=3.12'; return; fi
  return 1
}

if [[ -x .venv/bin/python ]] && ok .venv/bin/python; then
  python=.venv/bin/python
else
  base="$(find_python)" || { echo "setup: no Python >= 3.12 found (tried \$PYTHON, PATH, pyenv, uv); install one, e.g. 'pyenv install 3.12'" >&2; exit 1; }
  echo "setup: creating .venv with $base ($("$base" --version))"
  rm -rf .venv
  "$base" -m venv .venv
  python=.venv/bin/python
fi

# The end-to-end test renders gym-hil's MuJoCo cameras headless with OSMesa (EGL needs a GPU), and
# gym-hil's dependency evdev has no wheel: pip compiles it (a C compiler and the kernel headers).
if [[ -n "$extras" ]]; then
  packages=()
  if ! ldconfig -p 2>/dev/null | grep libOSMesa >/dev/null; then packages+=(libosmesa6); fi
  if ! command -v cc >/dev/null || [[ ! -e /usr/include/linux/input.h ]]; then packages+=(gcc libc6-dev); fi
  if [[ ${#packages[@]} -gt 0 ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      echo "setup: installing ${packages[*]} (for gym-hil and the end-to-end test)"
      quietly apt-get update -qq
      DEBIAN_FRONTEND=noninteractive quietly apt-get install -y -qq "${packages[@]}"
    else
      echo "setup: warning: missing ${packages[*]}; gym-hil and the end-to-end test need them (Debian/Ubuntu: sudo apt-get install ${packages[*]})" >&2
    fi
  fi
fi

echo "setup: installing bufconv${extras:+ with dev extras} into .venv"
quietly "$python" -m pip install --quiet --upgrade pip
quietly "$python" -m pip install --quiet -e ".${extras}"
echo "setup: ready: $("$python" --version), bufconv $("$python" -c 'import bufconv; print(bufconv.__version__)')${extras:+ with dev extras}"
