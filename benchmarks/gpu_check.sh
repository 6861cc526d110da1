#!/usr/bin/env bash
# GPU check: both training stages on every GPU of this machine (torchrun, NCCL, bfloat16),
# then an ensemble on one GPU, on fields of config/test.yaml's size (16 x 16 cells, 5 levels)
# and of config/era5.yaml's (144 x 208 cells, 10 levels: the built-in synthetic atmosphere
# on the ERA5 grid, with era5's U-Net). Prints for each training samples/s per GPU, peak GPU
# memory and the end of the loss curve; for the ensemble, members x times per second.
#
#   bash benchmarks/gpu_check.sh [STEPS]     # from the repository root; STEPS per stage, default 300
#
# Runs PYTHON (default .venv/bin/python, else python), which needs torch's CUDA build and
# snakemake; geodiff comes from this checkout (PYTHONPATH=src). Writes results/gpu-check-*/
# (delete them afterwards). Stops at once, saying why, on a machine without a usable GPU.
# Source it (`. benchmarks/gpu_check.sh`) to call its functions one by one.
set -euo pipefail

STEPS=${1:-300}
MEMBERS=8        # ensemble members
SAMPLER_STEPS=18 # Heun steps of the sampler
PER_GPU_BATCH=8  # train.batch_size is the global batch: PER_GPU_BATCH x GPUs
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

die() {
    echo "gpu_check.sh: $*" >&2
    exit 1
}

# NGPU: the GPUs nvidia-smi lists; stops unless there is one and torch can use it.
require_gpus() {
    command -v nvidia-smi >/dev/null || die "no nvidia-smi here: this check needs NVIDIA GPUs and their driver"
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    [ "$NGPU" -gt 0 ] || die "nvidia-smi lists no GPU"
    "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
        die "$PYTHON: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') cannot use the GPUs (a CPU build?)"
}

# write_config SIZE NGPU: results/gpu-check-SIZE.yaml, config/test.yaml on GPUs (SIZE test) or
# on the ERA5 grid, levels and U-Net of config/era5.yaml (SIZE era5).
write_config() {
    "$PYTHON" - "$1" "$2" "$STEPS" "$PER_GPU_BATCH" <<'EOF'
import sys

import yaml

size, ngpu, steps, per_gpu = sys.argv[1], *map(int, sys.argv[2:])
with open("config/test.yaml") as f:
    config = yaml.safe_load(f)
if size == "era5":
    with open("config/era5.yaml") as f:
        era5 = yaml.safe_load(f)
    config.update(grid=era5["grid"], levels=era5["levels"], model=era5["model"])
config["run_name"] = f"gpu-check-{size}"
config["ablations"] = []
config["train"].update(device="cuda", amp=True, batch_size=per_gpu * ngpu, deterministic_steps=steps,
                       residual_steps=steps, checkpoint_every=steps)
with open(f"results/gpu-check-{size}.yaml", "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF
}

# prepare SIZE: the run's stores (synthetic data, regridding, priors) and resolved config.
prepare() {
    local run=results/gpu-check-$1
    "$PYTHON" -m snakemake --cores all "$run/priors/train.h5" "$run/priors/val.h5" "$run/priors/test.h5" \
        --configfile "results/gpu-check-$1.yaml" >"results/gpu-check-$1.snakemake.log" 2>&1 ||
        die "building the stores failed: see results/gpu-check-$1.snakemake.log"
}

# watch_memory FILE: GPU memory in use (MiB, every GPU) twice a second until killed.
watch_memory() {
    exec nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 >"$1"
}

# train SIZE STAGE: STEPS steps of the stage from scratch on every GPU.
train() {
    local run=results/gpu-check-$1 stage=$2 extra=()
    [ "$stage" = residual ] && extra=(--deterministic "$run/models/deterministic.pt")
    rm -rf "$run/models/$stage.pt" "$run/models/$stage.pt.ckpt" "$run/logs/tensorboard/$stage"
    mkdir -p "$run/logs"
    watch_memory "$run/logs/gpu_check_$stage.memory.csv" &
    local watcher=$!
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m geodiff train --stage "$stage" \
        --train "$run/priors/train.h5" --val "$run/priors/val.h5" "${extra[@]}" --out "$run/models/$stage.pt" \
        --logdir "$run/logs/tensorboard/$stage" --config "$run/config.resolved.yaml" --device cuda \
        >"$run/logs/gpu_check_$stage.log" 2>&1 || {
        kill "$watcher"
        die "training $stage failed: see $run/logs/gpu_check_$stage.log"
    }
    kill "$watcher"
}

# training_report SIZE STAGE NGPU: samples/s per GPU (between the second and the last logged
# step, past start-up and compilation), peak GPU memory and the last logged losses.
training_report() {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import sys

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

size, stage, ngpu = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = f"results/gpu-check-{size}"
with open(f"{run}/config.resolved.yaml") as f:
    batch = yaml.safe_load(f)["train"]["batch_size"]
events = EventAccumulator(f"{run}/logs/tensorboard/{stage}", size_guidance={"scalars": 0})
events.Reload()
loss = events.Scalars(f"{stage}/loss")
if len(loss) < 3:
    sys.exit(f"{size} {stage}: {len(loss)} logged losses, too few to time (more STEPS?)")
first, last = loss[1], loss[-1]
per_gpu = (last.step - first.step) * batch / (last.wall_time - first.wall_time) / ngpu
with open(f"{run}/logs/gpu_check_{stage}.memory.csv") as f:
    peak = max((int(line.split(",")[1]) for line in f if "," in line), default=0)
tail = ", ".join(f"{e.step}: {e.value:.4f}" for e in loss[-5:])
print(f"{size:>4} {stage:<13} {per_gpu:9.1f} samples/s per GPU  peak {peak:6d} MiB  loss {tail}")
EOF
}

# sample SIZE: an ensemble of MEMBERS on the test split, on one GPU; prints its rate.
sample() {
    local run=results/gpu-check-$1
    local out=$run/samples/gpu_check.nc start end
    mkdir -p "$run/samples"
    watch_memory "$run/logs/gpu_check_sample.memory.csv" &
    local watcher=$!
    start=$(date +%s.%N)
    "$PYTHON" -m geodiff sample --store "$run/priors/test.h5" --deterministic "$run/models/deterministic.pt" \
        --residual "$run/models/residual.pt" --out "$out" --members "$MEMBERS" --steps "$SAMPLER_STEPS" \
        --device cuda >"$run/logs/gpu_check_sample.log" 2>&1 || {
        kill "$watcher"
        die "sampling failed: see $run/logs/gpu_check_sample.log"
    }
    end=$(date +%s.%N)
    kill "$watcher"
    sample_report "$1" "$out" "$start" "$end"
}

# sample_report SIZE FILE START END: members x times per second of an ensemble file (start-up included).
sample_report() {
    "$PYTHON" - "$@" "$MEMBERS" "$SAMPLER_STEPS" <<'EOF'
import sys

import xarray as xr

size, path, start, end, members, steps = sys.argv[1:]
with xr.open_dataset(path) as ds:
    times = ds.sizes["time"]
rate = int(members) * times / (float(end) - float(start))
memory = f"results/gpu-check-{size}/logs/gpu_check_sample.memory.csv"
try:
    with open(memory) as f:
        peak = max((int(line.split(",")[1]) for line in f if "," in line), default=0)
except FileNotFoundError:
    peak = 0
print(f"{size:>4} {'sample':<13} {rate:9.1f} samples/s on 1 GPU    peak {peak:6d} MiB  "
      f"({members} members x {times} times, {steps} steps, start-up included)")
EOF
}

main() {
    require_gpus
    echo "gpu_check.sh: $NGPU GPU(s), $STEPS steps per stage, $PYTHON"
    mkdir -p results
    for size in test era5; do
        write_config "$size" "$NGPU"
        prepare "$size"
        for stage in deterministic residual; do
            train "$size" "$stage"
            training_report "$size" "$stage" "$NGPU"
        done
        sample "$size"
    done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main
fi
