# One image for every role (migrate, worker, trainer, beat); docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
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
