#!/usr/bin/env bash
# The demo, without `ros2 launch` (same nodes as launch/demo.launch.py): the synthetic demo camera publishes frames
# + instance masks, finecaption_node captions them on the embedded default model, and caption_listener prints the
# captions from /region_captions (next to the scene's true captions) and saves annotated frames. Stops by itself
# after FRAMES caption messages (or TIMEOUT seconds).
#
# Usage: scripts/run_demo.sh [--frames N] [--out DIR] [--timeout S] [--rate HZ] [--task dense|attribute|global]
#                            [--model PATH] [--seed N]
# Env:   VENV  the venv set up by scripts/setup_ros.sh (default: .venv in the repository root)
# Exit status 0 when captions arrived; the nodes' logs are in OUT.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${VENV:-$ROOT/.venv}/bin/python"
FRAMES=5 OUT="$ROOT/out/demo" TIMEOUT=300 RATE=1.0 TASK=dense MODEL="" SEED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --frames) FRAMES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --task) TASK="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "run_demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
float() { case "$1" in *.*) echo "$1" ;; *) echo "$1.0" ;; esac; }  # rclpy wants 2.0, not 2, for a double
TIMEOUT="$(float "$TIMEOUT")" RATE="$(float "$RATE")"
[ -x "$PY" ] || { echo "run_demo.sh: no venv at ${VENV:-$ROOT/.venv}; run scripts/setup_ros.sh first" >&2; exit 2; }

# DDS traffic stays on this machine, in a ROS domain of this run's own.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${FINECAPTION_DEMO_DOMAIN_ID:-$(( 1 + $$ % 230 ))}"
export PYTHONUNBUFFERED=1 RCUTILS_COLORIZED_OUTPUT=0
# Camera-sized frames need a larger Fast DDS shared-memory segment (finecaption_ros/ros_support/dds.py).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/finecaption_ros/ros_support/fastdds_large_frames.xml}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT"/annotated_*.png
cd "$ROOT"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TOPICS=(-r image:=/demo/image -r mask:=/demo/mask)
NODE_ARGS=(-p publish_annotated:=true -p "task:=$TASK")
[ -n "$MODEL" ] && NODE_ARGS+=(-p "model_path:=$MODEL")
echo "demo: ROS_DOMAIN_ID=$ROS_DOMAIN_ID, task $TASK, $FRAMES frames, output in $OUT"
"$PY" -m finecaption_ros.ros.node --ros-args "${TOPICS[@]}" "${NODE_ARGS[@]}" > "$OUT/node.log" 2>&1 &
NODE=$!
PIDS+=("$NODE")
"$PY" -m finecaption_ros.ros.source --ros-args "${TOPICS[@]}" -p "rate:=$RATE" -p "seed:=$SEED" \
  > "$OUT/source.log" 2>&1 &
PIDS+=($!)
"$PY" -m finecaption_ros.ros.listener --ros-args -p "count:=$FRAMES" -p "timeout:=$TIMEOUT" -p "save_dir:=$OUT" \
  -p "save_count:=$FRAMES" -r annotated_image:=/finecaption_node/annotated_image \
  -r ground_truth:=/finecaption_source/ground_truth &
LISTENER=$!
PIDS+=("$LISTENER")
# Wait for the listener; stop early when the node dies (e.g. a missing model).
while kill -0 "$LISTENER" 2>/dev/null; do
  if ! kill -0 "$NODE" 2>/dev/null; then
    echo "run_demo.sh: finecaption_node exited; its log ($OUT/node.log):" >&2
    tail -n 20 "$OUT/node.log" >&2
    exit 1
  fi
  sleep 0.5
done
wait "$LISTENER"
STATUS=$?
if [ "$STATUS" -ne 0 ]; then
  echo "run_demo.sh: no captions arrived; the node's log ($OUT/node.log) ends with:" >&2
  tail -n 20 "$OUT/node.log" >&2
fi
exit "$STATUS"
