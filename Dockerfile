# fitserve: API and workers in one image. CPU torch by default; for a GPU worker build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.*
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# `[ray]` for the images of a Ray cluster (docker-compose.ray.yml).
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/fitserve
# torch first, from the chosen index, and pinned again below, so the project install cannot
# pull another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY fitserve_client ./fitserve_client
COPY migrations ./migrations
# /srv/artifacts is owned by the service user, so a named volume mounted there is too.
RUN pip install ".${EXTRAS}" "torch==${TORCH_VERSION}" && useradd --create-home --uid 10001 fitserve \
    && mkdir -p /srv/artifacts && chown fitserve /srv/artifacts

USER fitserve
ENV FITSERVE_HOST=0.0.0.0 \
    FITSERVE_PORT=8000 \
    FITSERVE_DATABASE_URL=sqlite:////home/fitserve/fitserve.db
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["sh", "-c", "fitserve db upgrade && exec fitserve serve"]
