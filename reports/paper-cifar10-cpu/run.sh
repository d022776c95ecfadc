#!/usr/bin/env bash
# The shortened CIFAR-10 degradation study behind this report (run from the project root):
# plain and residual nets at 20 and 56 layers, the paper's recipe cut to 3,200 iterations
# (8 epochs, learning rate /10 at 1,600 and 2,400), trained on all 50k images and tested on
# the 10k test images after every epoch (Figure 6's protocol). Each is an MLflow run in the
# resnet-cifar10 experiment, nested under one parent run; `resnet report` draws from them.
#
# GRID, LENGTH, MILESTONES, MODELS, SEED and TRAIN_SIZE change the grid's name, schedule,
# models, training seed and training set (defaults: this report's, seed 0, all 50k images).
# A MODELS entry may name its own seed, model:seed (resnet56:1), to add seeds to one grid.
# Arguments go to every `resnet train` as params.yaml overrides, e.g. train.precision=fp32.
set -euo pipefail
grid=${GRID:-paper-cifar10-cpu}
out=runs/$grid
schedule=("train.schedule.length=${LENGTH:-3200}" "train.schedule.milestones=${MILESTONES:-[1600,2400]}"
  train.checkpoint_every=400 train.log_every=50)

# Passed to `resnet train` too, so the runs' logged preprocess.* params name this data.
data=(preprocess.cifar10.val_size=0 "preprocess.cifar10.train_size=${TRAIN_SIZE:-0}")

resnet preprocess "${data[@]}" \
  --prepared data/prepared/cifar10 --out "$out/data" --report "$out/preprocess.json"
parent=$(python - "$grid" <<'PY'
import sys, mlflow
from pathlib import Path
from resnet_mlops.tracking.runs import experiment_id
from resnet_mlops.tracking import tracking_uri
uri = tracking_uri(Path.cwd())
client = mlflow.MlflowClient(uri)
exp_id = experiment_id(client, "resnet-cifar10", uri)
run = client.create_run(exp_id, run_name=f"grid {sys.argv[1]}", tags={"grid": sys.argv[1]})
print(run.info.run_id)
PY
)
for entry in ${MODELS:-plain20 resnet20 plain56 resnet56}; do
  model=${entry%%:*} seed=${SEED:-0} run=$model
  if [[ $entry == *:* ]]; then seed=${entry#*:} run=$model-seed$seed; fi
  RESNET_RUN_TAGS="{\"mlflow.parentRunId\": \"$parent\", \"grid\": \"$grid\"}" \
    resnet train train.model=$model "${schedule[@]}" "${data[@]}" train.seed=$seed --data "$out/data" \
    --out "$out/$run" --metrics "$out/$run/train.json" --history "$out/$run/history.json" "$@"
done
python -c "import mlflow, sys; from pathlib import Path; \
from resnet_mlops.tracking import tracking_uri; \
mlflow.MlflowClient(tracking_uri(Path.cwd())).set_terminated(sys.argv[1])" "$parent"
