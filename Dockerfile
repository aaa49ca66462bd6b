# The recall worker image: `docker build -t realtime-recall .`
# Runs `recall worker` by default; any `recall` subcommand can be given instead
# (e.g. `docker run --rm realtime-recall demo --help`).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY recall ./recall
COPY stream ./stream
COPY offline ./offline
COPY devtools ./devtools
# wheels for the project and all its dependencies (numpy, gensim... have manylinux wheels)
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECALL_METRICS_PORT=9108 \
    RECALL_METRICS_HOST=0.0.0.0 \
    RECALL_WEB_HOST=127.0.0.1
RUN useradd --system --uid 10001 --home-dir /app --create-home recall
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# faust keeps its local state (table changelogs) under the working directory
WORKDIR /app
USER recall
# numba's compiled kernels cached in the image: a worker without them compiles at start
# (~10-20 s) and keeps ~120 MB more RSS for its whole life (LLVM's modules)
ENV NUMBA_CACHE_DIR=/app/.numba-cache
RUN python -c "from stream.worker import _warm_up; _warm_up()"
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECALL_METRICS_PORT', '9108') + '/metrics', timeout=4)"
ENTRYPOINT ["recall"]
CMD ["worker"]
