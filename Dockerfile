# The warehouse graphs as one image; the container command picks the graph:
#   warehouseloader (default) | submittingcentres | dataprocess   (scripts in bin/, on PATH)
# Build: docker build -t warehouse:<version> .   (add --platform linux/arm64 for ARM64 tasks)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Runtime dependencies only, pinned, installed at build time (nothing is fetched at run time;
# test and lint tools are in requirements-dev.txt, which is not part of the build context).
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

RUN groupadd --system --gid 10001 warehouse \
    && useradd --system --uid 10001 --gid warehouse --home-dir /home/warehouse --create-home \
       --shell /usr/sbin/nologin warehouse

COPY warehouse/ warehouse/
COPY bin/ bin/
RUN chmod 0755 bin/* && python -m compileall -q warehouse

ENV PATH=/app/bin:$PATH

USER warehouse

CMD ["warehouseloader"]
