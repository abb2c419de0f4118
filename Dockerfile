# clipwatch in a container: CPU build by default. compose.yaml runs it with MySQL 9; docs/operations.md
# "Containers" has the details (volumes, the UID/GID 10001 of the upload directories, upgrades).
#   docker build -t clipwatch .          (or: podman build --format docker -t clipwatch .)
#   docker run -v /srv/uploads:/srv/uploads:ro -v clipwatch-models:/models -v clipwatch-data:/data \
#     -e CLIPWATCH_WATCH__PATHS=/srv/uploads -e CLIPWATCH_STORE__URL=mysql://clipwatch@db:3306/clipwatch \
#     -e CLIPWATCH_STORE__PASSWORD_FILE=/run/secrets/db-password clipwatch
# /data holds what must outlive the container: the instance name (its rows in a shared table), the SQLite
# store when no store.url is set, caches. TORCH_INDEX selects the torch build: the CPU wheels by default;
# for CUDA, e.g. (not tested by this project: no GPU in its CI)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t clipwatch:cuda .
# and run it with --gpus all (model.device = auto then picks the GPU).
ARG PYTHON_VERSION=3.11
# BASE: any Debian-like image with python (>= 3.11) and venv; scripts/image-test builds one from Debian's
# packages (no registry is reachable there).
ARG BASE=python:${PYTHON_VERSION}-slim

FROM ${BASE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pdqhash (Meta's PDQ, README "File hashes in each row") is compiled at install: a C++ compiler, and the
# Python headers where the base has none, in this build stage only (the final image copies the virtualenv,
# not the compiler). Debian's current g++.
# hadolint ignore=DL3008
RUN include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
    && dev=$([ -e "$include/Python.h" ] || echo python3-dev) \
    && apt-get update && apt-get install -y --no-install-recommends g++ ${dev:+"$dev"} && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/clipwatch
ENV PATH=/opt/clipwatch/bin:$PATH
# Build-only pip settings may come as build arguments (PIP_FIND_LINKS: a directory of local wheels,
# PIP_CERT: a CA bundle), mounted with `podman build -v` (scripts/image-test): they stay in this stage.
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY daemon /src/daemon
RUN pip install --no-cache-dir "/src[openvino]"

FROM ${BASE}
COPY --from=build /opt/clipwatch /opt/clipwatch
# UID and GID 10001: the upload directories must be readable (with quarantine or the publish gate,
# writable) by them.
RUN groupadd --system --gid 10001 clipwatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home clipwatch \
    && mkdir -p /data /models && chown clipwatch:clipwatch /data /models
ENV PATH=/opt/clipwatch/bin:$PATH \
    HF_HOME=/models \
    CLIPWATCH_DAEMON__DATA_DIR=/data \
    CLIPWATCH_METRICS__LISTEN=0.0.0.0:9464 \
    CLIPWATCH_LOG__FORMAT=json
VOLUME ["/models", "/data"]
EXPOSE 9464
USER 10001:10001
STOPSIGNAL SIGTERM
# The model loads in seconds from /models once cached; the first start downloads it. With
# http.protect_metrics, `clipwatch health` uses the daemon's own token in /data (no user needed).
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 CMD ["clipwatch", "health"]
# Exec form: clipwatch is PID 1 and gets SIGTERM itself (it finishes the batch in hand, then exits 0).
ENTRYPOINT ["clipwatch"]
CMD ["run"]
