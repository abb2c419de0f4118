# clipwatch in a container: CPU build by default.
#   docker build -t clipwatch .
#   docker run -v /srv/uploads:/srv/uploads:ro -v clipwatch-models:/models -v clipwatch-data:/data \
#     -e CLIPWATCH_WATCH__PATHS=/srv/uploads -e CLIPWATCH_STORE__URL=mysql://clipwatch@db:3306/clipwatch \
#     -e CLIPWATCH_STORE__PASSWORD_FILE=/run/secrets/db-password clipwatch
# TORCH_INDEX selects the torch build: the CPU wheels by default; for CUDA, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t clipwatch:cuda .
# and run it with --gpus all (model.device = auto then picks the GPU).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pdqhash (Meta's PDQ, README "File hashes in each row") is compiled at install: a C++ compiler, in this
# build stage only (the final image copies the virtualenv, not the compiler). Debian's current g++.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/clipwatch
ENV PATH=/opt/clipwatch/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY daemon /src/daemon
RUN pip install --no-cache-dir /src

FROM python:${PYTHON_VERSION}-slim
COPY --from=build /opt/clipwatch /opt/clipwatch
RUN useradd --system --uid 10001 --home-dir /data --no-create-home clipwatch \
    && mkdir -p /data /models && chown clipwatch /data /models
ENV PATH=/opt/clipwatch/bin:$PATH \
    HF_HOME=/models \
    CLIPWATCH_DAEMON__DATA_DIR=/data \
    CLIPWATCH_METRICS__LISTEN=0.0.0.0:9464 \
    CLIPWATCH_LOG__FORMAT=json
VOLUME ["/models", "/data"]
EXPOSE 9464
USER 10001
STOPSIGNAL SIGTERM
# The model loads in seconds from /models once cached; the first start downloads it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 CMD ["clipwatch", "health"]
# Exec form: clipwatch is PID 1 and gets SIGTERM itself (it finishes the batch in hand, then exits 0).
ENTRYPOINT ["clipwatch"]
CMD ["run"]
