# Sourced by the study scripts: strict mode, the repository root as the working folder, and the settings every
# study shares (each can be overridden from the environment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-python}
M=${M:-resnet20}
DATASET=${DATASET:-CIFAR10}
DATA_DIR=${DATA_DIR:-data}
