#!/usr/bin/env bash
# One-command set-up for a fresh machine (and for the Docker image).
#
#   bash docker/setup.sh run  [wmpo run args]   set up, then run the main job on the embedded default
#   bash docker/setup.sh test [pytest args]     set up, then run the test suite
#   bash docker/setup.sh install                set up only
#
# Finds Python 3.12 (WMPO_PYTHON, python3.12 on PATH, pyenv, uv, /usr/bin), installs the OS
# packages offscreen MuJoCo and LeRobot's video decoding need (or says exactly what to install),
# creates .venv in the repository and installs the project with the PyPI ROS 2 wheels and what
# LeRobot's own CLIs (lerobot-train, lerobot-info, lerobot-edit-dataset) need. Re-running is cheap: the
# install step is skipped while pyproject.toml is unchanged.
#
# With ROS 2 installed system-wide (Jazzy/Kilted): `source /opt/ros/<distro>/setup.bash` first
# and set WMPO_SYSTEM_ROS=1; the venv then sees the system rclpy and the PyPI ROS wheels are skipped.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
cmd="${1:-install}"
shift || true

die() { echo "setup: $*" >&2; exit 1; }

find_python312() {
  local candidates=()
  [ -n "${WMPO_PYTHON:-}" ] && candidates+=("$WMPO_PYTHON")
  command -v python3.12 >/dev/null 2>&1 && candidates+=("$(command -v python3.12)")
  if command -v pyenv >/dev/null 2>&1; then
    local v
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -t. -k3 -n -r); do
      candidates+=("$(pyenv root)/versions/$v/bin/python3.12")
    done
  fi
  local d
  for d in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [ -x "$d" ] && candidates+=("$d")
  done
  command -v uv >/dev/null 2>&1 && candidates+=("$(uv python find 3.12 2>/dev/null || true)")
  candidates+=(/usr/bin/python3.12 /usr/local/bin/python3.12)
  local p
  for p in "${candidates[@]}"; do
    [ -n "$p" ] && [ -x "$p" ] || continue
    if "$p" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}

apt_install() {
  # Install Debian/Ubuntu packages when we are allowed to; otherwise say exactly what to run.
  local pkgs=("$@")
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; } \
      || die "could not install ${pkgs[*]}; run: sudo apt-get install -y ${pkgs[*]}"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
      || die "could not install ${pkgs[*]}; run: sudo apt-get update && sudo apt-get install -y ${pkgs[*]}"
  else
    die "missing OS packages. Run: sudo apt-get install -y ${pkgs[*]}   (then re-run this command)"
  fi
}

python="$(find_python312)" || {
  echo "setup: Python 3.12 not found." >&2
  echo "  Ubuntu 24.04: sudo apt-get install -y python3.12 python3.12-venv" >&2
  echo "  pyenv:        pyenv install 3.12" >&2
  echo "  or point WMPO_PYTHON at a python3.12 binary." >&2
  exit 1
}

# Offscreen MuJoCo rendering on CPU needs OSMesa.
if ! ldconfig -p 2>/dev/null | grep -q 'libOSMesa\.so'; then
  echo "setup: installing libosmesa6 (offscreen MuJoCo rendering)"
  apt_install libosmesa6
fi

# LeRobot decodes video with torchcodec, which loads the system FFmpeg shared libraries (major
# versions 4-8); without them every LeRobot import logs ~30 lines of "Could not load libtorchcodec"
# traceback and `lerobot-info` dies. The `ffmpeg` package pulls exactly these libraries, under the
# same name on Debian and Ubuntu whatever their FFmpeg version.
ffmpeg_missing=()
for lib in avutil avcodec avformat avdevice avfilter swscale swresample; do
  ldconfig -p 2>/dev/null | grep -q "lib$lib\.so\." || ffmpeg_missing+=("lib$lib")
done
if [ "${#ffmpeg_missing[@]}" -gt 0 ]; then
  echo "setup: installing ffmpeg (shared libraries ${ffmpeg_missing[*]} for LeRobot's torchcodec video decoding)"
  apt_install ffmpeg
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $python"
  venv_flags=()
  [ "${WMPO_SYSTEM_ROS:-0}" = 1 ] && venv_flags+=(--system-site-packages)
  "$python" -m venv "${venv_flags[@]}" "$venv" 2>/dev/null || {
    # Ubuntu's python3.12 ships venv separately.
    apt_install python3.12-venv
    "$python" -m venv "${venv_flags[@]}" "$venv"
  }
fi

extras="lerobot-tools,dev"
[ "${WMPO_SYSTEM_ROS:-0}" = 1 ] || extras="ros-pypi,lerobot-tools,dev"
stamp="$venv/.wmpo-installed"
want="$(cat "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the project into $venv (first run downloads several GB: torch, ROS 2 wheels, lerobot)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
  echo "$want" > "$stamp"
fi

export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"

case "$cmd" in
  install) echo "setup: ready. Activate with: source $venv/bin/activate" ;;
  run) cd "$repo" && exec "$venv/bin/wmpo" run "$@" ;;
  test) cd "$repo" && exec "$venv/bin/python" -m pytest "$@" ;;
  *) die "unknown command '$cmd' (expected: install, run, test)" ;;
esac
