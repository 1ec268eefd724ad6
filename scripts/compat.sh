#!/usr/bin/env bash
# The compatibility run: bufconv held against each LeRobot release it supports besides the main
# suite's (0.6.1, in .venv), each in a venv of its own with the Python that release needs.
#   scripts/compat.sh              every release of bufconv/lerobot/releases.py but the oracle
#   scripts/compat.sh 0.3.3 0.6.1  those releases
#   --verbose                      show what pip and pytest print (by default only when a step fails)
# Each venv is .venv-lerobot-<release> (gitignored): the release, bufconv from this working tree
# (editable, with its `lerobot` extra) and pytest, installed by uv (the dev extra has it): uv
# unpacks each wheel once into its cache and hardlinks it into every venv, so 0.4.4 and 0.5.1,
# which resolve the same torch, hold it once on disk (about 6 GB: torch and its CUDA libraries),
# and nothing is kept in two forms (pip holds a download beside its unpacked copy until the
# install ends). A venv whose marker file records the same requirement, Python, pyproject.toml
# and build files (setup.py, the kernel's C source) is reused as it is; any other is made anew. Then tests/compat runs in it, with its own pytest.ini.
# One line per release (tests passed, set-up and test seconds), then a total; exit 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

verbose=0
wanted=()
for arg in "$@"; do
  case "$arg" in
    --verbose|-v) verbose=1 ;;
    -*) echo "compat: unknown option $arg (expected --verbose, or release numbers)" >&2; exit 2 ;;
    *) wanted+=("$arg") ;;
  esac
done

# Any Python >= 3.10 reads the table (the file imports only the standard library).
reader=""
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null \
     && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    reader="$candidate"; break
  fi
done
[[ -n "$reader" ]] || { echo "compat: no Python >= 3.10 to read bufconv/lerobot/releases.py" >&2; exit 1; }
table="$("$reader" bufconv/lerobot/releases.py "${wanted[@]}")" || exit 2

# The newest installed Python X.Y: pythonX.Y on PATH (a pyenv shim counts only if it runs), then
# pyenv's versions, then uv.
is_version() { "$1" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$2')" >/dev/null 2>&1; }
find_python() {
  local version="$1" candidate root
  if command -v "python$version" >/dev/null && is_version "python$version" "$version"; then
    command -v "python$version"; return
  fi
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  if command -v pyenv >/dev/null; then root="$(pyenv root)"; fi
  for candidate in $(ls -d "$root/versions/$version".* 2>/dev/null | sort -V -r); do
    if is_version "$candidate/bin/python" "$version"; then echo "$candidate/bin/python"; return; fi
  done
  if command -v uv >/dev/null && uv python find "$version" >/dev/null 2>&1; then uv python find "$version"; return; fi
  return 1
}

fingerprint() {  # what a reusable venv must have been made from
  echo "requirement=$1"
  echo "python=$("$2" -c 'import sys; print(sys.version.split()[0])')"
  echo "pyproject=$(sha256sum pyproject.toml | cut -d' ' -f1)"
  echo "build=$(cat setup.py bufconv/buffer/_pixelpass.c | sha256sum | cut -d' ' -f1)"  # the compiled kernel
}

# uv on PATH, else the dev venv's (scripts/setup.sh --dev installs it).
uv="$(command -v uv || true)"
[[ -n "$uv" ]] || { [[ -x .venv/bin/uv ]] && uv=.venv/bin/uv; }
[[ -n "$uv" ]] || { echo "compat: uv not found (PATH, .venv/bin): scripts/setup.sh --dev installs it" >&2; exit 1; }

# pip's --report as constraints for uv: every package pip chose, at the version it chose.
pins='import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if not item["download_info"].get("dir_info", {}).get("editable"):
        print(meta["name"] + "==" + meta["version"])'

free_gib() { df -Pk "$1" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }

# Make (or reuse) the venv of one release. Prints "new" or "reused".
setup() {
  local version="$1" python_version="$2" requirement="$3" venv=".venv-lerobot-$1" base log
  base="$(find_python "$python_version")" || {
    echo "compat: LeRobot $version: no Python $python_version found (PATH, pyenv, uv); e.g. 'pyenv install $python_version'" >&2
    return 1
  }
  if [[ -f "$venv/.bufconv-compat" ]] && [[ "$(cat "$venv/.bufconv-compat")" == "$(fingerprint "$requirement" "$base")" ]]; then
    echo reused; return
  fi
  rm -rf "$venv"
  log="$(mktemp -t bufconv-compat.XXXXXX)"
  # pip resolves (what `pip install bufconv[lerobot] lerobot==X` gives a user: uv's own resolver
  # can pick other versions, e.g. numpy 2.5 with 0.4.4, whose writer then fails), uv installs
  # exactly that, and checks it (`uv pip check`). An extra that the release lacks fails the set-up:
  # `pip install bufconv[lerobot]` must install cleanly on every release.
  if ! { "$uv" venv --quiet --seed --python "$base" "$venv" \
         && "$venv/bin/python" -m pip install --quiet --dry-run --report "$venv/resolved.json" \
              "$requirement" -e ".[lerobot]" "pytest>=8" \
         && "$venv/bin/python" -c "$pins" "$venv/resolved.json" >"$venv/resolved.txt" \
         && "$uv" pip install --python "$venv/bin/python" --constraint "$venv/resolved.txt" \
              "$requirement" -e ".[lerobot]" "pytest>=8" \
         && "$uv" pip check --python "$venv/bin/python"; } >"$log" 2>&1 \
     || grep -E "WARNING: (lerobot|bufconv) [^ ]+ does not provide the extra" "$log" >&2; then
    tail -30 "$log" >&2
    if grep -q "No space left on device" "$log"; then
      echo "compat: LeRobot $version: the disk is full ($(free_gib .) GiB free here): a new release venv needs about 7 GB (torch and its CUDA libraries), 0.4.4 and 0.5.1 share one; free some, or remove old .venv-lerobot-* and $("$uv" cache dir)" >&2
    fi
    mkdir -p "$venv" && mv "$log" "$venv/setup.log"
    echo "compat: LeRobot $version: set-up failed (all of it in $venv/setup.log)" >&2
    return 1
  fi
  if [[ $verbose == 1 ]]; then cat "$log" >&2; fi
  mv "$log" "$venv/setup.log"
  fingerprint "$requirement" "$base" >"$venv/.bufconv-compat"
  echo new
}

total_passed=0
total_failed=0
summary=()
while read -r version python_version requirement layout; do
  start=$SECONDS
  echo "compat: LeRobot $version (Python $python_version, $layout): setting up .venv-lerobot-$version ($(free_gib .) GiB free)"
  if ! how="$(setup "$version" "$python_version" "$requirement")"; then
    summary+=("compat: LeRobot $version: set-up failed after $((SECONDS - start)) s")
    total_failed=$((total_failed + 1))
    continue
  fi
  setup_s=$((SECONDS - start))
  venv=".venv-lerobot-$version"
  log="$venv/tests.log"
  start=$SECONDS
  status=0
  "$venv/bin/python" -m pytest -c tests/compat/pytest.ini tests/compat -q -p no:cacheprovider >"$log" 2>&1 || status=$?
  test_s=$((SECONDS - start))
  [[ $verbose == 1 || $status != 0 ]] && grep -v "^Svt\[" "$log" | tail -60
  closing="$(grep -E "^[0-9]+ (passed|failed|error)|^=+ .*(passed|failed|error)" "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
  passed="$(grep -oE "[0-9]+ passed" <<<"$closing" | cut -d' ' -f1 || true)"
  failed=$(( $(grep -oE "[0-9]+ failed" <<<"$closing" | cut -d' ' -f1 || echo 0) + $(grep -oE "[0-9]+ errors?" <<<"$closing" | cut -d' ' -f1 || echo 0) ))
  if [[ $status != 0 && $failed == 0 ]]; then failed=1; fi  # pytest itself failed (no tests, a usage error)
  total_passed=$((total_passed + ${passed:-0}))
  total_failed=$((total_failed + failed))
  py="$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
  summary+=("compat: LeRobot $version on Python $py ($layout): ${closing:-no result (exit $status)}; set-up ${setup_s} s ($how venv), tests ${test_s} s")
done <<<"$table"

printf '%s\n' "${summary[@]}"
echo "compat: $total_passed passed, $total_failed failed"
[[ $total_failed == 0 ]]
