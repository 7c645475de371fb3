# One image for every role (migrate, worker, trainer, beat); docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
# A C++ compiler: torch.compile builds the int8 engine's quantize kernels with it at worker start
# (without one the sentiment model falls back to bf16, at about 0.7x the speed).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# CPU wheels by default; a GPU host builds with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch>=2.2"
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --create-home reviews
USER reviews
ENV REVIEWS_HOME=/home/reviews/data
ENTRYPOINT ["reviews"]
