#!/usr/bin/env bash
# Which of bf16 autocast and the DALI CPU loader makes ResNet-56 train more slowly per
# iteration on this CPU than its fp32 twin on a GPU: the first 6 epochs (2,346 iterations at
# lr 0.1) of the 50k recipe with one of the two swapped for the GPU run's choice. Needs the
# 50k data folder that run.sh made for this report (runs/paper-cifar10-cpu-10k/data). Runs go
# to the MLflow experiment resnet-cifar10-ab, tagged grid=ab-cpu-<variant>.
set -euo pipefail
data=runs/paper-cifar10-cpu-10k/data
common=(train.model=resnet56 train.schedule.length=2346 "train.schedule.milestones=[2345]"
  train.checkpoint_every=400 train.log_every=50 train.experiment=resnet-cifar10-ab
  preprocess.cifar10.val_size=0 --data "$data")
for variant in "bf16-torch train.precision=bf16 loader.backend=torch" \
  "fp32-dali train.precision=fp32 loader.backend=dali"; do
  set -- $variant
  name=$1
  shift
  RESNET_RUN_TAGS="{\"grid\": \"ab-cpu-$name\"}" resnet train "${common[@]}" "$@" \
    --out "runs/ab-cpu/$name" --metrics "runs/ab-cpu/$name/train.json" \
    --history "runs/ab-cpu/$name/history.json"
done
