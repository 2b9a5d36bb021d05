# bpoc-proxy: one image, run as a Deployment or as a sidecar in the portal's pod (README, "Kubernetes").
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin proxy
COPY rules.yaml ./rules.yaml

# The defaults of the settings, spelled out for operators reading the image (README, "Settings").
ENV PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080 \
    PROXY_RULES=/app/rules.yaml

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["bpoc-proxy"]
CMD ["serve"]
