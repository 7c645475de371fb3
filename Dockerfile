# One image for every role (migrate, worker, trainer, beat); docker-compose.yml picks the command.
FROM python:3.11-slim AS app
WORKDIR /app
# A C++ compiler: torch.compile builds the int8 engine's quantize kernels with it at worker start
# (without one the sentiment model falls back to bf16, at about 0.7x the speed).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# CPU wheels by default. A GPU host builds CUDA wheels: TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (pick the CUDA version the host's driver supports: `nvidia-smi` shows it); docker-compose.gpu.yml passes
# it through. A CUDA wheel is several GB bigger.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch>=2.2"
# The user, and every directory a compose volume mounts on, created here and owned by it. A named
# volume takes the ownership of the image's directory the first time it is mounted; a directory the
# image lacks is created by Docker as root, and the service could not write there.
#   /models                            model versions (REVIEWS_MODEL_DIR in docker-compose.yml)
#   /home/reviews/data                 REVIEWS_HOME: the beat schedule
#   /home/reviews/.cache/huggingface   HF_HOME: models downloaded from the Hugging Face Hub
RUN useradd --create-home reviews \
    && mkdir -p /models /home/reviews/data /home/reviews/.cache/huggingface \
    && chown -R reviews:reviews /models /home/reviews/data /home/reviews/.cache
ENV REVIEWS_HOME=/home/reviews/data \
    HF_HOME=/home/reviews/.cache/huggingface
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-cache-dir .
# The beat service's healthcheck (docker-compose.yml).
COPY docker/healthcheck.py /usr/local/lib/reviews/healthcheck.py
USER reviews
ENTRYPOINT ["reviews"]

# Flower, the Celery monitor (docker-compose.yml, profile "monitoring"): the same image plus flower,
# which the package does not depend on. Built only with `--target flower`.
FROM app AS flower
USER root
RUN pip install --no-cache-dir "flower>=2.0"
USER reviews
ENTRYPOINT ["celery", "-A", "worker.entry", "flower"]

# The default target (a plain `docker build .`): the service image, without flower.
FROM app
