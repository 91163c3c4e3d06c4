#!/usr/bin/env bash
# The prepared GPU run: run it whenever a session is lent a GPU (one H100/H200, <= 9 min of wall time).
#
#   bash bench/gpu_experiment.sh            # on the device machine, from the repository root
#
# 1. (~1 min) realistic sizes with random weights: the xl world model's imagined frames/s at 30
#    sampling steps and the realistic VLA's chunk inference (bench_world_model.py, bench_vla.py);
# 2. (the rest, capped at 7 min) a medium-scale WMPO experiment, the CPU experiment's protocol with
#    tiny models and more data: P = 64 rollouts per round, 2 rounds, 200 evaluation episodes per
#    policy on held-out seeds, evaluation spread over the machine's cores. It is resumable, so a
#    second call continues where the first was cut off.
# Results: docs/results/wmpo_experiment_gpu.json (+ .png) and $OUT/ (when the device tool sets it).
# Needs the venv: `bash docker/setup.sh install` first, or carry .venv.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-${MUJOCO_GL}}"
py="${WMPO_PY:-.venv/bin/python}"
out="${OUT:-data/gpu_run}"
mkdir -p "$out" docs/results
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt" || echo "no nvidia-smi" | tee "$out/device.txt"

timeout 90 "$py" bench/bench_world_model.py --config xl --device cuda --batch-sizes 8 --steps 30 --frames 16 2>&1 | tee "$out/bench_world_model_xl.txt"
timeout 60 "$py" bench/bench_vla.py --config realistic --device cuda --repeats 10 2>&1 | tee "$out/bench_vla_realistic.txt"

workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
timeout 420 "$py" bench/wmpo_experiment.py --out data/gpu_experiment --robot so101_sim_near --size cpu \
  --budget 64 --check-episodes 32 --eval-episodes 200 --rounds 2 --workers "$workers" --device cuda \
  --set grpo_iterations=6 --set groups_per_batch=8 --results docs/results --tag gpu 2>&1 | tail -n 60 | tee "$out/experiment_tail.txt"
status=${PIPESTATUS[0]}
cp -r docs/results "$out/" 2>/dev/null || true
echo "gpu_experiment: experiment exit status $status"
