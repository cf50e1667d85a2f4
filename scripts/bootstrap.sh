#!/usr/bin/env bash
# Sets up molmo2_ros without a system ROS 2: a .venv with ROS 2 Jazzy from PyPI wheels,
# torch, transformers and the rest; the venv made a ROS prefix for this package as a
# colcon install would be (interfaces, share/molmo2_ros/{launch,config}, lib/molmo2_ros
# executables, ament index; CMakeLists.txt says what goes where); the package itself
# installed editable; the ROS 2 command-line and launch tools from ../shared/ros2-tools
# when that folder exists; and `source .venv/bin/activate` sets AMENT_PREFIX_PATH.
# Idempotent: each step is skipped while its inputs are unchanged (a stamp in
# .venv/.bootstrap holds their hash).
#
# Environment: PYTHON (interpreter to use, default: python3.11, else python3),
#              VENV (default: .venv at the repository root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
STAMPS=$VENV/.bootstrap

say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites: fail with a clear message, not a stack trace -----------------------
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need cmake "install CMake >= 3.16 (Debian/Ubuntu: apt-get install cmake)"
need cc "install a C compiler (Debian/Ubuntu: apt-get install build-essential)"
need c++ "install a C++ compiler (Debian/Ubuntu: apt-get install build-essential)"

if [[ -z "${PYTHON:-}" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[[ -n "${PYTHON:-}" ]] || die "no Python found: install Python 3.11 (the ROS 2 Jazzy wheels are built for CPython 3.11)"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || die "$PYTHON does not run"
[[ "$PYVER" == "3.11" ]] || die "$PYTHON is Python $PYVER; the ROS 2 Jazzy wheels need CPython 3.11 (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON lacks venv/ensurepip (Debian/Ubuntu: apt-get install python3.11-venv)"
if command -v ninja >/dev/null 2>&1; then GENERATOR=Ninja; else GENERATOR="Unix Makefiles"; fi

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
fresh() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

# --- 1. virtual environment ------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV with $PYTHON ($PYVER)"
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check -q)

# --- 2. Python dependencies (pinned in requirements/) ----------------------------------
REQ_HASH=$(hash_of "$ROOT"/requirements/*.txt)
if fresh requirements "$REQ_HASH"; then
  say "dependencies up to date"
else
  say "installing dependencies: ROS 2 Jazzy wheels, torch, transformers, ... (a few minutes the first time)"
  "${PIP[@]}" install --upgrade pip
  "${PIP[@]}" install -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/runtime.txt" \
    -r "$ROOT/requirements/dev.txt" -r "$ROOT/requirements/serving.txt"
  stamp requirements "$REQ_HASH"
  rm -f "$STAMPS/interfaces"   # rebuilt against the new wheels
fi

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

# --- 3. the ROS install layout (interfaces, launch/, config/, executables), by CMake ---
IFACE_HASH=$(hash_of "$ROOT"/msg/*.msg "$ROOT"/action/*.action "$ROOT/CMakeLists.txt" "$ROOT/package.xml" \
  "$ROOT"/launch/* "$ROOT"/config/* "$ROOT/scripts/molmo2_grounding" "$ROOT/scripts/video_publisher")
if fresh interfaces "$IFACE_HASH"; then
  say "ROS install layout up to date"
else
  say "building interfaces (msg/, action/) and installing launch/, config/ and the executables into $VENV"
  # The wheels' CMake exports hard-code their build host's Python include paths.
  PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("include"))')
  NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
  { grep -rlZ --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" || true; } \
    | xargs -0 -r sed -i \
        -e "s|/opt/python/cp311-cp311/include/python3.11|$PYINC|g" \
        -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$NPINC|g"
  BUILD=$VENV/build/molmo2_ros
  rm -rf "$BUILD"; mkdir -p "$VENV/build"
  CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV \
    cmake -S "$ROOT" -B "$BUILD" -G "$GENERATOR" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DMOLMO2_ROS_INSTALL_PYTHON=OFF \
      >"$BUILD.log" 2>&1 || { tail -40 "$BUILD.log" >&2; die "CMake configure failed (full log: $BUILD.log)"; }
  CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV \
    cmake --build "$BUILD" --target install -j "$(nproc)" >>"$BUILD.log" 2>&1 \
    || { tail -40 "$BUILD.log" >&2; die "CMake build/install failed (full log: $BUILD.log)"; }
  # The generated Python lands in site-packages/molmo2_ros/{msg,action}. Its __init__.py
  # would hide the editable source package (without it the directory is merged into the
  # source package's __path__: molmo2_ros/__init__.py extends it), and its egg-info would
  # make pip treat those files as the molmo2_ros distribution and delete them.
  rm -rf "$SITE/molmo2_ros/__init__.py" "$SITE"/molmo2_ros-*.egg-info
  stamp interfaces "$IFACE_HASH"
fi

# --- 4. the package itself (editable: console entry points, source from the checkout) ---
# setuptools' strict editable mode: a tree of links to the package's files (engines/ and
# training/ inside it as molmo2_ros.engines and molmo2_ros.training, as setup.py maps them) is
# all that goes on sys.path, so `import engines` or `import training` finds nothing, as after a
# non-editable or colcon install. Edits apply at once; a module added, removed or renamed
# needs this step again, hence the file list in its hash.
PKG_FILES=$(cd "$ROOT" && find molmo2_ros engines training \( -name __pycache__ -o -path training/configs/runs \) \
  -prune -o -print | LC_ALL=C sort)
PKG_HASH=$(printf '%s\n' "$PKG_FILES" | cat "$ROOT/setup.py" - | sha256sum | cut -d' ' -f1)
if fresh package "$PKG_HASH"; then
  say "molmo2_ros up to date"
else
  say "installing molmo2_ros (editable, strict: links in $ROOT/build)"
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" --config-settings editable_mode=strict \
    >"$VENV/pip-editable.log" 2>&1 || { tail -30 "$VENV/pip-editable.log" >&2; die "pip install -e failed"; }
  rm -f "$SITE/molmo2_ros/engines" "$SITE/molmo2_ros/training"   # links an earlier bootstrap made there
  stamp package "$PKG_HASH"
fi

# --- 5. the environment: activating the venv does what `source install/setup.bash` does --
if ! grep -q "molmo2_ros: ROS prefix" "$VENV/bin/activate"; then
  say "adding AMENT_PREFIX_PATH to $VENV/bin/activate"
  cat >>"$VENV/bin/activate" <<'ACTIVATE'
# molmo2_ros: ROS prefix (added by scripts/bootstrap.sh; what `source install/setup.bash` sets)
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$VIRTUAL_ENV:"*) ;;
  *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac
ACTIVATE
fi

# --- 6. the ROS 2 command-line and launch tools (ros2 launch/run/topic/..., launch_pytest) --
TOOLS=$ROOT/../shared/ros2-tools/install.sh
if [[ -f "$TOOLS" ]]; then
  bash "$TOOLS" "$VENV" || die "installing the ROS 2 tools from $(dirname "$TOOLS") failed"
else
  say "no ../shared/ros2-tools: the ros2 command and launch are not installed (the tests that need them skip)"
fi

# --- 7. a browser for the review page's test (tests/training/test_review_page.py) ----------
# Debian's chromium + chromium-driver, driven by selenium (requirements/dev.txt). Installed with
# apt when missing and running as root (CI); otherwise say how (the test skips, except in CI).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium and chromium-driver (apt) for the review page's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >"$VENV/apt-chromium.log" 2>&1 || die "apt-get install chromium chromium-driver failed (log: $VENV/apt-chromium.log)"
  else
    say "note: no chromium/chromedriver; the review page's browser test skips (apt-get install chromium chromium-driver)"
  fi
fi

# --- 8. FFmpeg's libraries for the server tests' `transformers serve` (torchcodec decodes with them) --
# Debian's ffmpeg, installed with apt when missing and running as root (CI); otherwise say how
# (tests/ros/test_server_backend.py skips, except in CI).
if ! command -v ffmpeg >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing ffmpeg (apt) for the server tests' video decoding"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; } \
      >"$VENV/apt-ffmpeg.log" 2>&1 || die "apt-get install ffmpeg failed (log: $VENV/apt-ffmpeg.log)"
  else
    say "note: no ffmpeg; the server tests skip (apt-get install ffmpeg)"
  fi
fi

"$PY" -c 'import molmo2_ros.msg, molmo2_ros.action, molmo2_ros.core' \
  || die "the installed package does not import (try: rm -rf $VENV/.bootstrap and rerun)"
say "ready: $VENV (source $VENV/bin/activate, then molmo2-ros ..., ros2 launch molmo2_ros ...)"
