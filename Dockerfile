# GPU worker image: CUDA and TensorRT from NVIDIA's TensorRT container, PyTorch (CUDA build), and t2v-fast with the
# `tensorrt` and `flows` extras. It runs one Prefect worker on the `render` queue of pool `gpu`, one shard at a time.
#
#   docker build -t t2v-fast-worker .
#   docker run --gpus all -e PREFECT_API_URL=http://PREFECT_SERVER:4200/api -v /shared:/shared t2v-fast-worker
#
# Outputs, manifests and engine directories live on /shared, a path every node mounts the same way.
#
# Pins, and why (not built in CI: no Docker there):
# - Base: NGC's TensorRT 25.10 container, CUDA 13.0 with TensorRT 10.13, inside the `tensorrt` extra's bounds
#   (>=10.0,<12), so installing the extra keeps the container's TensorRT (checked below) rather than pulling a
#   second copy from PyPI built against another CUDA.
# - torch: the CUDA 13.0 build from PyTorch's cu130 index, matching the container's CUDA (TensorRT and torch then
#   share one CUDA runtime and driver requirement); the PyPI default wheel's CUDA changes between releases.
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/t2v-fast

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cu130"
RUN python3 -m pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
    && python3 -c "import os, torch; cuda = os.environ['CUDA_VERSION'].split('.')[0]; \
assert torch.version.cuda.split('.')[0] == cuda, (torch.version.cuda, cuda)" \
    && python3 -c "import tensorrt; print(tensorrt.__version__)" > /tmp/tensorrt-version

# The library and the top-level packages installed beside it (export, flows, benchmarks); the deployments run the
# flows from where they are installed, the same path on every node of this image.
COPY pyproject.toml README.md LICENSE ./
COPY t2v_fast ./t2v_fast
COPY export ./export
COPY flows ./flows
COPY benchmarks ./benchmarks
RUN python3 -m pip install ".[tensorrt,flows]" && python3 -c "import tensorrt, flows.nightly; \
assert tensorrt.__version__ == open('/tmp/tensorrt-version').read().strip(), 'the extra replaced the container TensorRT'"

RUN useradd --create-home --uid 1000 worker && chown -R worker /opt/t2v-fast
USER worker

ENTRYPOINT ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--work-queue", "render", "--limit", "1"]
