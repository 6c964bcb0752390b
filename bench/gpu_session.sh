#!/usr/bin/env bash
# The prepared device check for a session that is lent a GPU (one H200 here: 15 minutes of device time in all, at most
# 10 a command). Each part is one command well inside 10 minutes; run `repro` first, then `bench`, then `shapes` if
# device time is left, and paste what they print into the closing note. Nothing here is needed by the tests, and no number from it is claimed until it has run.
#
#   bash bench/gpu_session.sh repro OUT_DIR   # the image reproduction at GPU size (device tool: ... repro $OUT)
#   bash bench/gpu_session.sh bench OUT_DIR   # DiT-XL/2 training MFU through train_ldm.py, the number the guide tracks
#   bash bench/gpu_session.sh shapes OUT_DIR  # whole shapes at 32 px: the pixel v-UNet with a GPU's steps (issue 37)
#
# repro: Fig. 1 as the CPU default runs it (the shipped baseline fine-tuned with SE and without, 3 seeds, the probe,
# the guard, the paired verdict), but with an LDM that can learn to sample: DiT-S/2 (33M parameters, 2.2 TFLOP a step
# of 256 latents of 16x16x8, bench/flops.py) for 5000 steps of 256 on 20,000 training images, against the CPU's tiny
# DiT (0.25M) for 2000 steps of 64 on 2000. Its sizes are estimates from those FLOP counts (about 1 minute an LDM at
# 200 TFLOP/s), not yet timed on a GPU; its lr, 3e-4, is DiT's 1e-4 raised for the short schedule, not yet swept.
# The grids to look at: OUT_DIR/repro/seed0/ldm_eps_{control,se}/samples/grid.png beside references/real/grid.png.
#
# shapes: on 2 CPU cores no recipe drew whole discs and rectangles at 32 px (docs/results.md); the best, pixels with the
# `tiny` v-UNet, saw 0.35M images in 2.7 single-thread hours. This trains the `small` v-UNet (4.95M, 6.6 GFLOP a
# training image) on pixels for 6 minutes at batch 256 (about 20x the CPU run's images at 35 steps/s, an estimate, not
# yet timed), then samples 256 from noise seed 1 and measures them against 256 held-out images with
# metrics.region_stats. Look at OUT_DIR/shapes_samples/grid.png: whole shapes or not.
set -euo pipefail
part=${1:?usage: bash bench/gpu_session.sh repro|bench|shapes OUT_DIR}
out=${2:?usage: bash bench/gpu_session.sh repro|bench|shapes OUT_DIR}
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
  shapes)
    timeout 360 python3 train_ldm.py --device cuda --dataset shapes --image_size 32 --ae none --model unet \
      --preset small --objective v --latent_norm channel --batch_size 256 --lr 1e-3 --ema_decay 0.9995 --ema_warmup \
      --num_workers 12 --cache_latents "$out/shapes_cache" --cache_size 50000 --max_steps 50000 \
      --eval_interval 2000 --ckpt_interval 1000 --out_dir "$out/shapes_pixels" 2>&1 | tail -n 30 || true
    python3 sample.py --device cuda --ckpt "$out/shapes_pixels/ema.pt" --num_samples 256 --batch_size 256 --seed 1 \
      --out_dir "$out/shapes_samples" 2>&1 | tail -n 5
    python3 - "$out/shapes_samples/samples.npz" <<'EOF' | tee "$out/shapes_regions.json"
import json, sys
import numpy as np
import torch
from evaluation.metrics import region_stats
from utils.data import DeadLeaves
held = DeadLeaves(32, train=False, style='shapes')
x = torch.stack([held[i][0] for i in range(256)])
s = torch.from_numpy(np.load(sys.argv[1])['arr_0']).permute(0, 3, 1, 2).float() / 127.5 - 1
print(json.dumps({'heldout': region_stats(x), 'samples': region_stats(s)}))
EOF
    ;;
  *)
    echo "unknown part $part: repro, bench or shapes" >&2; exit 2 ;;
esac
