#!/usr/bin/env bash
# The GPU path, on a host with an NVIDIA GPU: the CUDA tests, then bench/gpu_bench.py (the card's peak,
# the engine at bf16/fp16 over token budgets, agreement with fp32, end to end through Redis and
# PostgreSQL). Figures go to stdout and, with OUT set, to $OUT/gpu.txt and $OUT/gpu.json.
#
#   bash bench/gpu.sh                 # with the project installed (pip install -e ".[test]") and
#                                     # PostgreSQL (5432) and Redis (6379) on 127.0.0.1, as for the tests
#
# For a bare GPU box without network (a lent benchmark machine), everything can travel in .gpu/
# (bench/gpu_pack.sh builds it):
#   .gpu/whl/*.whl          the Python packages the box lacks (installed with --no-index into /tmp/site)
#                           (on the lent H100/H200 image: celery and its kombu, billiard, vine, amqp,
#                           click-didyoumean/-repl/-plugins, prompt_toolkit, wcwidth, tzdata, tzlocal;
#                           redis, SQLAlchemy, greenlet, alembic, Mako, psycopg[binary], py3langid,
#                           starlette, uvicorn)
#   .gpu/pgserver-*.whl     PostgreSQL binaries (the pgserver wheel), started on 5432 as user nobody
#   .gpu/redis/             a redis-server binary and the libraries it needs, started on 6379
#   .gpu/data/imdb/unsup.jsonl.gz   the reviews to measure on (REVIEWS_DATA_DIR)
# Missing pieces are skipped with a message; what runs is not changed by them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/reviews-gpu}
mkdir -p "$OUT"
REVIEWS_BENCH_REVIEWS=${REVIEWS_BENCH_REVIEWS:-2048}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
[ -d .gpu/data ] && export REVIEWS_DATA_DIR="$PWD/.gpu/data"

up() { python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null; }

if ! up 5432 && compgen -G ".gpu/pgserver-*.whl" >/dev/null; then
  rm -rf /tmp/pg /tmp/pgdata && mkdir -p /tmp/pg && python3 -m zipfile -e .gpu/pgserver-*.whl /tmp/pg >/dev/null
  PGBIN=/tmp/pg/pgserver/pginstall/bin
  chmod -R a+rx /tmp/pg && mkdir -p /tmp/pgdata && chown nobody /tmp/pgdata
  as_nobody() { if command -v runuser >/dev/null; then runuser -u nobody -- "$@"; else su -s /bin/sh nobody -c "$*"; fi; }
  as_nobody "$PGBIN/initdb" -D /tmp/pgdata -U postgres --auth=trust -E UTF8 >"$OUT/initdb.log" 2>&1 \
    && as_nobody "$PGBIN/pg_ctl" -D /tmp/pgdata -l /tmp/pgdata/log -w \
         -o "-c listen_addresses=127.0.0.1 -p 5432 -c unix_socket_directories=/tmp -c fsync=off" start >/dev/null \
    || { echo "PostgreSQL did not start:"; tail -5 "$OUT/initdb.log" /tmp/pgdata/log 2>/dev/null; }
fi
if ! up 6379 && [ -x .gpu/redis/redis-server ]; then
  LD_LIBRARY_PATH=.gpu/redis .gpu/redis/redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
    --appendonly no --logfile "$OUT/redis.log" || echo "Redis did not start"
fi
for _ in $(seq 20); do up 5432 && up 6379 && break; sleep 0.5; done
E2E=""
up 5432 && up 6379 || { E2E="--no-e2e"; echo "no PostgreSQL or Redis on 127.0.0.1: end to end skipped"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} | tee "$OUT/gpu.txt"

python3 -c "from worker import language; print('language detector:', 'C++' if language._scorer() else 'py3langid (no C++ build)')" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

echo "== CUDA tests" | tee -a "$OUT/gpu.txt"
timeout "${REVIEWS_GPU_TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
  2>&1 | tail -25 | tee -a "$OUT/gpu.txt"

if [ -f .gpu/base/bench/gpu_bench.py ]; then
  # An earlier engine (worker/ of another commit, with this bench/) on the same card in the same call:
  # the baseline a change is measured against.
  echo "== baseline engine ($(cat .gpu/base/COMMIT 2>/dev/null))" | tee -a "$OUT/gpu.txt"
  timeout "${REVIEWS_GPU_BASE_TIMEOUT:-150}" python3 .gpu/base/bench/gpu_bench.py --reviews "$REVIEWS_BENCH_REVIEWS" \
    --grid "${REVIEWS_GPU_BASE_GRID:-bf16:16384:64,bf16:16384:512,bf16:65536:512}" --procs "" --no-e2e ${REVIEWS_GPU_BASE_ARGS:-} \
    2>"$OUT/gpu_base.err" | tee -a "$OUT/gpu.txt"
fi

echo "== benchmark" | tee -a "$OUT/gpu.txt"
timeout "${REVIEWS_GPU_BENCH_TIMEOUT:-330}" python3 bench/gpu_bench.py --reviews "$REVIEWS_BENCH_REVIEWS" $E2E \
  --json "$OUT/gpu.json" ${REVIEWS_GPU_BENCH_ARGS:-} 2>"$OUT/gpu_bench.err" | tee -a "$OUT/gpu.txt"
tail -30 "$OUT/gpu_bench.err"

# The ceiling of one engine process on this host's CPU, however fast the GPU (a model that costs nothing).
# REVIEWS_GPU_HOST_TIMEOUT=0 leaves it out.
if [ "${REVIEWS_GPU_HOST_TIMEOUT:-90}" != 0 ]; then
  echo "== host side (bench/host_overhead.py)" | tee -a "$OUT/gpu.txt"
  timeout "${REVIEWS_GPU_HOST_TIMEOUT:-90}" python3 bench/host_overhead.py --reviews "$REVIEWS_BENCH_REVIEWS" \
    --model-size tiny 2>&1 | grep -v "^Writing\|it/s" | tee -a "$OUT/gpu.txt"
fi
