#!/usr/bin/env bash
# Install the pinned torch into a virtual environment, choosing the wheel index by the machine.
#
#   scripts/install_torch.sh PIP [TORCH_INDEX]
#
# TORCH_INDEX (default: auto)
#   auto       no `nvidia-smi` on PATH: the CPU wheel from https://download.pytorch.org/whl/cpu (about 200 MB),
#              falling back to plain PyPI when that index cannot be reached; with `nvidia-smi`: PyPI (the
#              CUDA build, several GB)
#   cuda|pypi  the default index (PyPI: the CUDA build on Linux)
#   cpu        the CPU index, with the same PyPI fallback as auto
#   <url>      that index URL, no fallback
set -eu

PIP=${1:?usage: install_torch.sh PIP [TORCH_INDEX]}
TORCH_INDEX=${2:-auto}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu

from_pypi() {
    echo "[install_torch] $TORCH_SPEC from PyPI"
    "$PIP" install "$TORCH_SPEC"
}

from_cpu_index() {
    echo "[install_torch] $TORCH_SPEC CPU build from $CPU_INDEX"
    if "$PIP" install --timeout 10 --retries 0 --index-url "$CPU_INDEX" "$TORCH_SPEC"; then
        return 0
    fi
    echo "[install_torch] $CPU_INDEX could not be used; falling back to PyPI"
    from_pypi
}

case "$TORCH_INDEX" in
    auto)
        if command -v nvidia-smi >/dev/null 2>&1; then
            from_pypi
        else
            from_cpu_index
        fi
        ;;
    cpu) from_cpu_index ;;
    cuda | pypi) from_pypi ;;
    http://* | https://* | file://*)
        echo "[install_torch] $TORCH_SPEC from $TORCH_INDEX"
        "$PIP" install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
        ;;
    *)
        echo "[install_torch] TORCH_INDEX must be auto, cpu, cuda, pypi or an index URL; got '$TORCH_INDEX'" >&2
        exit 2
        ;;
esac
