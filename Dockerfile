# syntax=docker/dockerfile:1
#
# bids_harmony BIDS App image; build and run instructions: containers/README.md
#
#   docker build -t bids_harmony:0.1.0 .
#   docker build --build-arg WITH_FSL=0 -t bids_harmony:0.1.0-nofsl .      # skip the FSL stage
#   docker build --build-arg TORCH_VARIANT=cu128 -t bids_harmony:0.1.0-cuda .
#
# Stages are chosen with build args (FROM runtime-fsl-${WITH_FSL}); BuildKit (default since
# Docker 23) and buildah build only the stages the final image needs, so WITH_FSL=0 never
# contacts FSL's conda channel (nor pulls MAMBA_IMAGE).
# Offline or mirrored builds (scripts/container-smoke.sh): BASE_IMAGE may be any Debian/Ubuntu
# image with python3 and python3-venv; TORCH_INDEX_URL, PIP_INDEX_URL and PIP_FIND_LINKS
# point pip elsewhere; PREFETCH_TEMPLATES=0 skips the TemplateFlow download.

ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG MAMBA_IMAGE=docker.io/mambaorg/micromamba:1.5.10
ARG WITH_FSL=1
# Read by pip from the environment of the stages that declare them: a PyPI mirror, and
# folders or URLs of extra wheels (e.g. a local torch wheel).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=

# ---------------------------------------------------------------- FSL (conda) ----
FROM ${MAMBA_IMAGE} AS fsl
ARG FSL_CHANNEL=https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/public/
# CPU eddy; GPU builds can use fsl-eddy-cuda-X.Y (one package per CUDA version).
ARG FSL_EDDY=fsl-eddy
USER root
# With FSLDIR and FSL_CREATE_WRAPPER_SCRIPTS set, the packages' post-link scripts write
# wrappers for the FSL commands only into $FSLDIR/share/fsl/bin (no conda python on PATH).
ENV FSLDIR=/opt/fsl FSL_CREATE_WRAPPER_SCRIPTS=1
RUN micromamba create --yes --prefix /opt/fsl --override-channels \
        --channel "${FSL_CHANNEL}" --channel conda-forge \
        fsl-topup "${FSL_EDDY}" fsl-bet2 fsl-flirt fsl-avwutils fsl-miscmaths \
    && micromamba clean --all --yes \
    && rm -rf /opt/fsl/include /opt/fsl/share/doc /opt/fsl/share/man \
    && find /opt/fsl -name '*.a' -delete

# ------------------------------------------------------- Python dependencies ----
FROM ${BASE_IMAGE} AS deps
ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA variant of download.pytorch.org that has TORCH_VERSION (e.g. cu128).
ARG TORCH_VARIANT=cpu
# Index torch is installed from; e.g. a mirror, or PyPI with the wheel in PIP_FIND_LINKS.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# Dependencies first, against a stub package: this layer is rebuilt only when
# pyproject.toml changes, not on every code change. The torch above satisfies them.
COPY pyproject.toml /src/
RUN mkdir /src/bids_harmony \
    && echo '__version__ = "0"' > /src/bids_harmony/__init__.py \
    && touch /src/README.md \
    && pip install /src \
    && pip uninstall --yes bids_harmony \
    && rm -rf /src

# -------------------------------------------------------------- TemplateFlow ----
# Templates for `group --template MNI152NLin2009cAsym[:res-2]`: nothing is downloaded at
# run time. Both T1w resolutions, so that the bare name also resolves offline.
# PREFETCH_TEMPLATES=0 (no access to TemplateFlow's S3) leaves only TemplateFlow's local
# skeleton: `group --template NAME` then fails, a template file still works.
FROM deps AS templateflow
ARG PREFETCH_TEMPLATES=1
ENV TEMPLATEFLOW_HOME=/opt/templateflow TEMPLATEFLOW_AUTOUPDATE=0
RUN if [ "${PREFETCH_TEMPLATES}" = 1 ]; then python -c "from templateflow import api; \
files = [api.get('MNI152NLin2009cAsym', resolution=res, suffix=suffix, desc=desc, \
                 extension='.nii.gz') \
         for res in (1, 2) for suffix, desc in (('T1w', None), ('mask', 'brain'))]; \
print(*files, sep='\n'); \
assert all(hasattr(f, 'stat') and f.stat().st_size > 0 for f in files), files"; \
    else python -W ignore -c "import templateflow.api"; fi \
    && test -d /opt/templateflow \
    && chmod -R a+rX /opt/templateflow

# --------------------------------------------------------------- Python venv ----
FROM deps AS venv
# pip fetches the build backend (setuptools) for the package build.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
COPY pyproject.toml README.md LICENSE /src/
COPY bids_harmony /src/bids_harmony
RUN pip install --no-deps /src && rm -rf /src

# ------------------------------------------------------------------- runtime ----
FROM ${BASE_IMAGE} AS runtime
ARG BIDSAPP_UID=1000
# libgomp1: OpenMP runtime for compiled extensions that do not bundle their own.
# HOME and /work are world-writable so that `-u $(id -u):$(id -g)` works as well.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "${BIDSAPP_UID}" --user-group --create-home --shell /bin/bash bidsapp \
    && chmod 1777 /home/bidsapp \
    && mkdir -p /bids /out /work \
    && chmod 1777 /work
# Every cache lives under /tmp: the image works read-only and under any UID.
ENV HOME=/home/bidsapp \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    NUMBA_CACHE_DIR=/tmp/numba \
    NIPYPE_NO_ET=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0

FROM runtime AS runtime-fsl-0

FROM runtime AS runtime-fsl-1
COPY --from=fsl /opt/fsl /opt/fsl
# FSL's own bin/ goes last: its conda libraries and tools never shadow the system's.
ENV FSLDIR=/opt/fsl \
    FSLOUTPUTTYPE=NIFTI_GZ \
    FSLMULTIFILEQUIT=TRUE \
    PATH=/opt/fsl/share/fsl/bin:$PATH:/opt/fsl/bin

# --------------------------------------------------------------------- final ----
FROM runtime-fsl-${WITH_FSL} AS final
ARG BIDSAPP_UID=1000
COPY --from=templateflow /opt/templateflow /opt/templateflow
COPY --from=venv /opt/venv /opt/venv
# Fail the build, not the first run, on a missing library or FSL tool.
RUN bids-harmony --version \
    && python -c "import ants, bids, dipy, nipype, templateflow.api, torch, bids_harmony.cli.run" \
    && if [ -n "${FSLDIR:-}" ]; then for tool in bet flirt topup; do \
           command -v "$tool" > /dev/null || { echo "FSL: $tool not found" >&2; exit 1; }; \
       done; fi \
    && find /tmp -mindepth 1 -delete

ARG VERSION=unknown
ARG VCS_REF=unknown
# GeneratedBy.Container of the outputs' dataset_description.json: the package runs from
# /opt/venv, and a virtual environment without this variable counts as no container.
ENV BIDS_HARMONY_CONTAINER_IMAGE="bids_harmony:${VERSION}"
LABEL org.opencontainers.image.title="bids_harmony" \
      org.opencontainers.image.description="BIDS App for phantom-trained (HARP) harmonization of multi-site diffusion MRI" \
      org.opencontainers.image.source="https://github.com/bids-harmony/bids_harmony" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /tmp
USER ${BIDSAPP_UID}:${BIDSAPP_UID}
ENTRYPOINT ["bids-harmony"]
CMD ["--help"]
