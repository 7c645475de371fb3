#!/usr/bin/env bash
# Builds .gpu/, what bench/gpu.sh needs on a bare GPU box without network (see its header): the Python
# packages that box lacks as wheels for its Python 3.12, PostgreSQL (the pgserver wheel), a Redis
# server with its libraries, the first 9,000 IMDb unsup reviews, and optionally an earlier engine to
# measure against in the same call. Run it where pip reaches PyPI:
#
#   bash bench/gpu_pack.sh                 # REVIEWS_DATA_DIR (default ../shared/data) has imdb/unsup.jsonl.gz
#   bash bench/gpu_pack.sh 8edf540         # and .gpu/base: worker/, cli/, bench/ of that commit
#
# .gpu/ is ignored by git (add "/.gpu/" to .git/info/exclude); the device tool carries it (carry: .gpu),
# and the bundled model files, which gpu.sh never reads, must stay behind: the tree travels under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
mkdir -p .gpu/whl .gpu/redis .gpu/data/imdb
wheels=(celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt_toolkit wcwidth tzdata
        tzlocal redis SQLAlchemy greenlet alembic Mako psycopg psycopg-binary py3langid starlette uvicorn)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/whl "${wheels[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu pgserver
server=$(command -v redis-server)
cp "$server" .gpu/redis/
# Its libraries but the C and C++ runtimes, which the box has.
for lib in $(ldd "$server" | awk '/=>/ {print $3}'); do
  case $lib in */libc.so*|*/libm.so*|*/libstdc++*|*/libgcc_s*) ;; *) cp -L "$lib" .gpu/redis/ ;; esac
done
data=${REVIEWS_DATA_DIR:-../shared/data}
zcat "$data/imdb/unsup.jsonl.gz" | head -n 9000 | gzip > .gpu/data/imdb/unsup.jsonl.gz
if [ $# -gt 0 ]; then
  rm -rf .gpu/base && mkdir -p .gpu/base
  git archive "$1" worker cli bench migrations pyproject.toml | tar -x -C .gpu/base
  rm -f .gpu/base/worker/models/*/model.safetensors
  git rev-parse --short "$1" > .gpu/base/COMMIT
fi
du -sh .gpu
