#!/usr/bin/env bash
# The prepared device check for a session that is lent a GPU (one H200 here: 15 minutes of device time in all, at most
# 10 a command). Each part is one command well inside 10 minutes; run `repro` first, then `bench`, and paste what they
# print into the closing note. Nothing here is needed by the tests, and no number from it is claimed until it has run.
#
#   bash bench/gpu_session.sh repro OUT_DIR   # the image reproduction at GPU size (device tool: ... repro $OUT)
#   bash bench/gpu_session.sh bench OUT_DIR   # DiT-XL/2 training MFU through train_ldm.py, the number the guide tracks
#
# repro: Fig. 1 as the CPU default runs it (the shipped baseline fine-tuned with SE and without, 3 seeds, the probe,
# the guard, the paired verdict), but with an LDM that can learn to sample: DiT-S/2 (33M parameters, 2.2 TFLOP a step
# of 256 latents of 16x16x8, bench/flops.py) for 5000 steps of 256 on 20,000 training images, against the CPU's tiny
# DiT (0.25M) for 2000 steps of 64 on 2000. Its sizes are estimates from those FLOP counts (about 1 minute an LDM at
# 200 TFLOP/s), not yet timed on a GPU; its lr, 3e-4, is DiT's 1e-4 raised for the short schedule, not yet swept.
# The grids to look at: OUT_DIR/repro/seed0/ldm_eps_{control,se}/samples/grid.png beside references/real/grid.png.
set -euo pipefail
part=${1:?usage: bash bench/gpu_session.sh repro|bench OUT_DIR}
out=${2:?usage: bash bench/gpu_session.sh repro|bench OUT_DIR}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "$part" in
  repro)
    python3 repro/reproduce.py --device cuda --jobs 3 --out_dir "$out/repro" --ldm_preset DiT-S/2 --ldm_lr 3e-4 \
      --ldm_steps 5000 --ldm_batch_size 256 --train_images 20000 --num_samples 1024 2>&1 | tee "$out/repro.log"
    cp "$out/repro/report.md" "$out/repro/report.json" "$out/" ;;
  bench)
    python3 bench/bench_ldm.py --device cuda --presets DiT-XL/2 --batch_size 128 --compile 2>&1 | tee "$out/bench.log" ;;
  *)
    echo "unknown part $part: repro or bench" >&2; exit 2 ;;
esac
