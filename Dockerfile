# syntax=docker/dockerfile:1
# bpoc-proxy's image (README, "Deploying"): the wheels are built in one stage and installed into a clean one,
# so the image holds the installed package and its dependencies, no source tree, no build tools.
#   docker build -t bpoc-proxy:0.1.0 .
# Both stages use the same base image: the wheels built in the first match the interpreter of the second.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The project's wheel and one for every dependency, so the runtime stage installs from /wheels alone.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, not copied: they never become a layer of this image.
# uid and gid 10001: the Kubernetes manifests' runAsUser/runAsGroup (tests/test_deploy.py checks they agree).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels bpoc-proxy \
    && groupadd --gid 10001 bpoc-proxy \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bpoc-proxy \
    && install -d -o 10001 -g 10001 -m 0700 /tmp/bpoc-proxy-metrics

# The rules live at a fixed path: mount a directory holding your rules.yaml at /etc/bpoc-proxy to replace them
# (a ConfigMap in Kubernetes, a bind mount with compose). PROXY_METRICS_DIR is the one place the proxy writes:
# with a read-only root filesystem, mount an emptyDir or a tmpfs there.
COPY rules.yaml /etc/bpoc-proxy/rules.yaml
ENV PROXY_RULES=/etc/bpoc-proxy/rules.yaml \
    PROXY_METRICS_DIR=/tmp/bpoc-proxy-metrics

USER 10001:10001
# 8080: the proxy (PROXY_PORT); 8081: the admin listener (PROXY_ADMIN_PORT: /healthz, /readyz, /metrics).
EXPOSE 8080 8081
# GET /healthz on the admin port, or on the main port when PROXY_ADMIN_PORT=0 (proxy/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "proxy.healthcheck"]
ENTRYPOINT ["bpoc-proxy"]
CMD ["serve"]
