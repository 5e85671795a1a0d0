# Kairos worker image: `docker build -t kairos .` then `docker run kairos worker` (see deploy/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/kairos
# Only what `pip install .` needs: the package metadata and the three packages.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY engine ./engine
COPY streams ./streams
RUN pip install . && rm -rf /opt/kairos/build

# An unprivileged user owning the RocksDB data directory (mount a volume there).
RUN useradd --system --uid 10001 --home-dir /var/lib/kairos kairos \
    && mkdir -p /var/lib/kairos && chown kairos /var/lib/kairos
USER 10001
WORKDIR /var/lib/kairos

# Listen on every interface inside the container; health, readiness, metrics and dashboard.
ENV KAIROS_DATA_DIR=/var/lib/kairos/data \
    KAIROS_WEB_HOST=0.0.0.0 \
    KAIROS_WEB_PORT=6066
EXPOSE 6066
VOLUME ["/var/lib/kairos"]

ENTRYPOINT ["kairos"]
CMD ["worker"]
