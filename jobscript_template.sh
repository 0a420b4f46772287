#!/usr/bin/env bash
# Driver job of the HPC step: submit with
#     sbatch jobscript_template.sh [CONFIG.yaml]
# It runs hpc_prediction.py, which submits the worker jobs itself (cluster.mode: slurm).
# The driver needs little: one core and a few GB (it never holds the volume).
#SBATCH --job-name=stardist-hpc
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --time=24:00:00
#SBATCH --output=stardist-hpc-%j.log
# Add site directives here, e.g.:
##SBATCH --partition=cpu
##SBATCH --account=mylab

set -euo pipefail

config="${1:-hpc_prediction_template.yaml}"
# sbatch runs a copy of this script: find the project from where it was submitted
project_dir="${STARDIST_HPC_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$project_dir"

# the environment: this project's .venv (make venv), or a conda env named stardist-hpc
if [ -x .venv/bin/python ]; then
    source .venv/bin/activate
elif command -v conda >/dev/null 2>&1; then
    eval "$(conda shell.bash hook)"
    conda activate stardist-hpc
fi

# the driver only schedules and writes: keep numerical libraries from oversubscribing its core
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PYTHONUNBUFFERED=1

echo "stardist-hpc driver job ${SLURM_JOB_ID:-local} on $(hostname) with $config"
exec python hpc_prediction.py "$config"
