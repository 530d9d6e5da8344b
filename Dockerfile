# GPU worker image: CUDA and TensorRT from NVIDIA's TensorRT container, PyTorch (CUDA build), and t2v-fast with the
# `tensorrt` and `flows` extras. It runs one Prefect worker on the `render` queue of pool `gpu`, one shard at a time.
#
#   docker build -t t2v-fast-worker .
#   docker run --gpus all -e PREFECT_API_URL=http://PREFECT_SERVER:4200/api -v /shared:/shared t2v-fast-worker
#
# Outputs, manifests and engine directories live on /shared, a path every node mounts the same way.
FROM nvcr.io/nvidia/tensorrt:25.01-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/t2v-fast

# PyTorch's Linux wheels on PyPI are CUDA builds; pinned to the version the project is tested with.
ARG TORCH_SPEC="torch==2.13.0"
RUN python3 -m pip install "${TORCH_SPEC}"

# The library and the folders installed inside it (t2v_fast.export, .flows, .benchmarks); the deployments run the
# flows from where they are installed, the same path on every node of this image.
COPY pyproject.toml README.md LICENSE ./
COPY t2v_fast ./t2v_fast
COPY export ./export
COPY flows ./flows
COPY benchmarks ./benchmarks
RUN python3 -m pip install ".[tensorrt,flows]" && python3 -c "import tensorrt, t2v_fast.flows.nightly"

RUN useradd --create-home --uid 1000 worker && chown -R worker /opt/t2v-fast
USER worker

ENTRYPOINT ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--work-queue", "render", "--limit", "1"]
