# Magic Canvas on an NVIDIA GPU:
#   docker build -t magic-canvas .
#   docker run --gpus all -e TELEGRAM_TOKEN -e DISCORD_TOKEN -v "$PWD/data:/app/data" \
#       -e CANVAS_WEB_LISTEN=0.0.0.0:8080 -p 127.0.0.1:8080:8080 magic-canvas   # + the gallery
# PyTorch's CUDA wheels bring their own CUDA libraries; the image only needs the driver's
# runtime, which the CUDA base image and the NVIDIA container toolkit provide.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/app/data/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# torch first and pinned, in its own layer: it is the big one and changes least. torchvision
# is the one built for that torch: spandrel needs it, for engine.upscaler's ESRGAN-family files.
RUN pip install torch==2.13.0 torchvision==0.28.0
COPY pyproject.toml README.md ./
COPY bot bot
COPY engine engine
RUN pip install '.[upscale]'
COPY config.yaml ./

# The database, the images and downloaded model weights live here; mount it to keep them.
VOLUME /app/data
CMD ["canvas", "run", "--config", "/app/config.yaml"]
