#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2329  # step functions are called through run_step
# Container smoke test of the bids_harmony image on a machine with no registry access
# (no Docker Hub, no FSL channel, no TemplateFlow S3; a Debian mirror and PyPI suffice).
#
#   sudo scripts/container-smoke.sh [--workdir DIR] [--keep] [--rebuild-base] [--no-cache]
#
#  1. debootstrap a Debian bookworm base (python3, python3-venv) and commit it as a local
#     image (buildah from scratch + add + commit); reused by later runs (--rebuild-base);
#  2. build the Dockerfile with `buildah bud --isolation chroot`, WITH_FSL=0 and
#     PREFETCH_TEMPLATES=0, torch from a local wheel folder when there is one (--wheels);
#  3. in the image (`buildah run --isolation chroot --network none`, as UID 1000): --version,
#     --help, simulate the tiny study, run the participant level with the BIDS folder bound
#     read-only, and check that an unwritable output folder makes the run fail;
#  4. print a summary (times, image size) and exit non-zero if any step failed.
#
# Step logs and the summary go to WORKDIR/logs. See containers/README.md, "Smoke test".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=/tmp/bids_harmony-smoke
IMAGE=localhost/bids_harmony:smoke
BASE_IMAGE=localhost/bids-harmony-base:bookworm
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# What the Dockerfile's stages need from the base: python3 + venv (pip, via ensurepip),
# CA certificates for pip, libgomp1 (runtime stage), passwd's useradd (minbase has it).
BASE_PACKAGES=python3,python3-venv,ca-certificates,libgomp1
WHEELS=auto
CA_BUNDLE=auto
KEEP=0
REBUILD_BASE=0
NO_CACHE=0
NPROCS=2
PARTICIPANTS=()
CTR=bids_harmony-smoke
APP_UID=1000

usage() {
    cat <<EOF
usage: $(basename "$0") [options]

Build the bids_harmony image with buildah from a debootstrapped Debian base (no registry)
and run --version, --help and the participant level of the tiny simulated study in it.

options:
  --workdir DIR          working folder (default: $WORKDIR)
  --keep                 keep the working container, simulated study and outputs
  --rebuild-base         debootstrap the base again even if $BASE_IMAGE exists
  --no-cache             build without buildah's layer cache
  --image NAME           image to build (default: $IMAGE)
  --base-image NAME      local base image (default: $BASE_IMAGE)
  --mirror URL           Debian mirror for debootstrap (default: $MIRROR)
  --wheels DIR|none      folder with the torch wheel, bound into the build; torch then
                         comes from it (else PyPI); default: /opt/wheels if it holds a
                         torch wheel, else none (torch from download.pytorch.org)
  --ca-bundle FILE|none  CA bundle bound over the build's system bundle, for TLS-
                         intercepting proxies (default: /etc/ssl/certs/ca-certificates.crt)
  --participant-label L  run only these participants (repeatable; default: all)
  --nprocs N             --nprocs of the participant run (default: $NPROCS)
  -h, --help             this help

Environment: STORAGE_DRIVER (e.g. vfs) and the other variables buildah reads.
EOF
}

die() { echo "container-smoke: $*" >&2; exit 2; }

while (($#)); do
    case $1 in
        --workdir) WORKDIR=${2:?}; shift ;;
        --keep) KEEP=1 ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        --no-cache) NO_CACHE=1 ;;
        --image) IMAGE=${2:?}; shift ;;
        --base-image) BASE_IMAGE=${2:?}; shift ;;
        --mirror) MIRROR=${2:?}; shift ;;
        --wheels) WHEELS=${2:?}; shift ;;
        --ca-bundle) CA_BUNDLE=${2:?}; shift ;;
        --participant-label) PARTICIPANTS+=("${2#sub-}"); shift ;;
        --nprocs) NPROCS=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

export BUILDAH_ISOLATION=chroot

# ----------------------------------------------------------------- prerequisites ----
command -v buildah > /dev/null \
    || die "buildah not found (Debian/Ubuntu: apt-get install buildah; Fedora: dnf install buildah)"
[[ -f $REPO/Dockerfile ]] || die "no Dockerfile in $REPO"
if ((EUID != 0)); then
    # Rootless buildah needs subordinate IDs for UID 1000 inside the image.
    grep -qs "^$(id -un):" /etc/subuid \
        || die "not root and no /etc/subuid entry for $(id -un): run with sudo, or set up" \
               "rootless buildah (usermod --add-subuids 100000-165535 --add-subgids" \
               "100000-165535 $(id -un))"
    buildah info > /dev/null 2>&1 || die "rootless buildah does not work here (buildah info)"
fi
NEED_BASE=1
if ((!REBUILD_BASE)) && buildah inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
    NEED_BASE=0
fi
if ((NEED_BASE)); then
    command -v debootstrap > /dev/null || die "debootstrap not found (apt-get install debootstrap)"
    ((EUID == 0)) || die "debootstrap needs root: run with sudo, or pass --base-image with an" \
                         "existing Debian image that has python3 and python3-venv"
fi
if [[ $WHEELS == auto ]]; then
    WHEELS=none
    compgen -G '/opt/wheels/torch-*.whl' > /dev/null && WHEELS=/opt/wheels
fi
if [[ $WHEELS != none ]]; then
    compgen -G "$WHEELS/torch-*.whl" > /dev/null || die "no torch-*.whl in --wheels $WHEELS"
    WHEELS=$(cd "$WHEELS" && pwd)
fi
if [[ $CA_BUNDLE == auto ]]; then
    CA_BUNDLE=none
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
[[ $CA_BUNDLE == none || -f $CA_BUNDLE ]] || die "--ca-bundle $CA_BUNDLE: no such file"

NO_NETWORK=()
if ((EUID == 0)) && unshare --net true 2> /dev/null; then
    NO_NETWORK=(unshare --net)
else
    echo "container-smoke: warning: runs in the image have the host's network" >&2
fi

mkdir -p "$WORKDIR/logs"
WORKDIR=$(cd "$WORKDIR" && pwd)
LOGS=$WORKDIR/logs
rm -f "$LOGS"/*.log "$LOGS"/*.txt
SIM=$WORKDIR/sim
OUT=$WORKDIR/out
WORK=$WORKDIR/work
NOTE=$LOGS/.note
free_gb=$(df -Pk "$WORKDIR" | awk 'NR == 2 {print int($4 / 1048576)}')
((free_gb >= 10)) || echo "container-smoke: warning: only ${free_gb} GB free in $WORKDIR" >&2

# ------------------------------------------------------------------- step runner ----
NAMES=() STATUS=() TIMES=() NOTES=()
FAILED=0
STEP=0

note() { printf '%s' "$*" > "$NOTE"; }

# run_step NAME FUNCTION: runs FUNCTION in a subshell with errexit, output to a log file.
run_step() {
    local name=$1 fn=$2 rc t0 log
    STEP=$((STEP + 1))
    log=$(printf '%s/%02d-%s.log' "$LOGS" "$STEP" "$fn")
    : > "$NOTE"
    printf '[%s] %-44s ' "$(date +%H:%M:%S)" "$name"
    t0=$(date +%s.%N)
    set +e
    (set -e; "$fn") > "$log" 2>&1
    rc=$?
    set -e
    NAMES+=("$name")
    TIMES+=("$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')")
    NOTES+=("$(cat "$NOTE")")
    if ((rc == 0)); then
        STATUS+=(pass)
        echo "pass (${TIMES[-1]} s) ${NOTES[-1]}"
    else
        STATUS+=(FAIL)
        FAILED=1
        echo "FAIL (${TIMES[-1]} s, exit $rc) ${NOTES[-1]}"
        echo "    --- last lines of $log:"
        tail -n 20 "$log" | sed 's/^/    /'
    fi
    return 0
}

skip_step() {
    NAMES+=("$1") STATUS+=(skip) TIMES+=(0) NOTES+=("$2")
    printf '[%s] %-44s skip %s\n' "$(date +%H:%M:%S)" "$1" "$2"
}

# own UID:GID PATH...: chown as the image sees it (rootless: in buildah's user namespace).
own() {
    if ((EUID == 0)); then chown "$@"; else buildah unshare chown "$@"; fi
}

# In the working container, chroot isolation, as the image's user unless --user is given.
# Chroot isolation shares the host's network (buildah refuses --network none with it): as
# root, the run gets an empty network namespace from unshare, so nothing is downloaded.
in_image() { "${NO_NETWORK[@]}" buildah run --isolation chroot "$@"; }

cleanup() {
    if ((!KEEP)); then
        buildah rm "$CTR" > /dev/null 2>&1 || true
        rm -rf "$WORKDIR/rootfs" "$WORKDIR/base.tar" "$SIM" "$OUT" "$WORK" "$WORKDIR/out-"*
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------- steps ----
debootstrap_base() {
    rm -rf "$WORKDIR/rootfs" "$WORKDIR/base.tar"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$WORKDIR/rootfs" "$MIRROR"
    local root=$WORKDIR/rootfs
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/* "$root"/etc/hostname "$root"/etc/resolv.conf
    tar -C "$root" --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -cf "$WORKDIR/base.tar" .
    rm -rf "$root"
    note "$(du -h "$WORKDIR/base.tar" | cut -f1) root tarball"
}

import_base() {
    local ctr
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$WORKDIR/base.tar" /
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash --os linux --arch amd64 \
        --label org.opencontainers.image.description="debootstrap $SUITE minbase + $BASE_PACKAGES" \
        "$ctr"
    buildah commit --rm "$ctr" "$BASE_IMAGE"
    rm -f "$WORKDIR/base.tar"
    note "$BASE_IMAGE"
}

build_image() {
    local version ref
    version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/bids_harmony/__init__.py")
    ref=$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)
    local args=(
        bud --isolation chroot --layers --force-rm
        --build-arg WITH_FSL=0 --build-arg PREFETCH_TEMPLATES=0
        --build-arg BASE_IMAGE="$BASE_IMAGE"
        --build-arg VERSION="${version:-unknown}" --build-arg VCS_REF="$ref"
        -f "$REPO/Dockerfile" -t "$IMAGE"
    )
    if [[ $WHEELS != none ]]; then
        # PyPI for the index, the local wheel (2.x.y+cpu sorts above PyPI's 2.x.y) wins.
        args+=(--volume "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels
               --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
    fi
    [[ $CA_BUNDLE == none ]] \
        || args+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    ((!NO_CACHE)) || args+=(--no-cache)
    echo "+ buildah ${args[*]} $REPO"
    buildah "${args[@]}" "$REPO"
    note "$(grep -c '^--> Using cache' "$LOGS/$(printf '%02d' "$STEP")-build_image.log" || true)" \
        "steps from the layer cache"
}

image_facts() {
    local size user entry torch
    size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n 1)
    user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
    entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
    echo "size: $size; user: $user; entrypoint: $entry"
    [[ $user == "$APP_UID:$APP_UID" ]] || { echo "image user is '$user', not $APP_UID" >&2; exit 1; }
    [[ $entry == "[bids-harmony]" ]] || { echo "entrypoint is '$entry'" >&2; exit 1; }
    buildah rm "$CTR" > /dev/null 2>&1 || true
    buildah from --pull=never --name "$CTR" "$IMAGE"
    # Sizes inside: the venv, and torch in it (most of the image).
    in_image "$CTR" -- du -sh /opt/venv /opt/templateflow
    torch=$(in_image "$CTR" -- python -c 'import pathlib, torch
print(torch.__version__, sum(f.stat().st_size for f in pathlib.Path(torch.__file__).parent.rglob("*") if f.is_file()) >> 20)')
    echo "torch $torch MiB"
    note "$size (torch ${torch% *}: ${torch#* } MiB)"
}

default_user() {
    local uid
    uid=$(in_image "$CTR" -- id -u)
    echo "id -u: $uid"
    [[ $uid == "$APP_UID" ]]
    note "runs as UID $uid"
}

show_version() {
    local v
    v=$(in_image --user "$APP_UID:$APP_UID" "$CTR" -- bids-harmony --version)
    echo "$v"
    [[ $v == "bids-harmony "* ]]
    note "$v"
}

show_help() {
    in_image --user "$APP_UID:$APP_UID" "$CTR" -- bids-harmony --help > "$LOGS/help.txt"
    cat "$LOGS/help.txt"
    grep -q 'participant,train,group' "$LOGS/help.txt"
    note "$(grep -c . "$LOGS/help.txt") lines of usage"
}

simulate() {
    rm -rf "$SIM"
    mkdir -p "$SIM"
    own "$APP_UID:$APP_UID" "$SIM"
    in_image --user "$APP_UID:$APP_UID" --volume "$SIM:/sim" "$CTR" -- \
        bids-harmony-simulate /sim/bids --size tiny --seed 0
    local n
    n=$(find "$SIM/bids" -path "$SIM/bids/sourcedata" -prune -o -name '*_dwi.nii.gz' -print | wc -l)
    ((n > 0))
    note "$n dwi runs, $(du -sh "$SIM/bids" | cut -f1)"
}

input_read_only() {
    # Even root in the container cannot write to the read-only bind.
    if in_image --user 0:0 --volume "$SIM/bids:/bids:ro" "$CTR" -- touch /bids/written; then
        echo "wrote into the read-only input" >&2
        rm -f "$SIM/bids/written"
        exit 1
    fi
    note "touch /bids/x refused"
}

participant() {
    rm -rf "$OUT" "$WORK"
    mkdir -p "$OUT" "$WORK"
    own "$APP_UID:$APP_UID" "$OUT" "$WORK"
    touch "$LOGS/.before-participant"
    local args=(/bids /out participant --preproc python -w /work --nprocs "$NPROCS")
    ((${#PARTICIPANTS[@]} == 0)) || args+=(--participant-label "${PARTICIPANTS[@]}")
    echo "+ bids-harmony ${args[*]}"
    in_image --user "$APP_UID:$APP_UID" --volume "$SIM/bids:/bids:ro" --volume "$OUT:/out" \
        --volume "$WORK:/work" "$CTR" -- bids-harmony "${args[@]}"
    local changed labels runs preproc sh fa files
    changed=$(find "$SIM/bids" -newer "$LOGS/.before-participant" | wc -l)
    ((changed == 0)) || { echo "$changed input files changed" >&2; exit 1; }
    find "$OUT" -type f | sed "s|^$OUT/||" | sort > "$LOGS/participant-outputs.txt"
    files=$(wc -l < "$LOGS/participant-outputs.txt")
    labels=$(IFS='|'; echo "${PARTICIPANTS[*]:-[^/]+}")
    runs=$(find "$SIM/bids" -path "$SIM/bids/sourcedata" -prune -o -name '*_dwi.nii.gz' -print \
        | grep -cE "/sub-($labels)/" || true)
    preproc=$(grep -c '_desc-preproc_dwi\.nii\.gz$' "$LOGS/participant-outputs.txt" || true)
    sh=$(grep -c '_model-sh_param-coeffs_dwimap\.nii\.gz$' "$LOGS/participant-outputs.txt" || true)
    fa=$(grep -c '_model-tensor_param-fa_dwimap\.nii\.gz$' "$LOGS/participant-outputs.txt" || true)
    echo "$runs input runs: $preproc preprocessed, $sh SH maps, $fa FA maps, $files files" \
         "(list: $LOGS/participant-outputs.txt)"
    ((preproc == runs && sh > 0 && fa == sh))
    [[ -z $(find "$OUT" ! -user "$APP_UID" -print -quit) ]] \
        || { echo "outputs not owned by UID $APP_UID" >&2; exit 1; }
    note "$preproc/$runs runs preprocessed, $sh SH + $fa FA maps, $files files"
}

# expect_failure VOLUME-OPTIONS...: the participant level into an unwritable /out must fail.
expect_failure() {
    local rc=0 msg=$WORKDIR/out-failure.txt
    in_image --user "$APP_UID:$APP_UID" --volume "$SIM/bids:/bids:ro" "$@" "$CTR" -- \
        bids-harmony /bids /out participant --preproc python --nprocs "$NPROCS" \
        --participant-label "$FIRST_PARTICIPANT" > "$msg" 2>&1 || rc=$?
    cat "$msg"
    echo "exit status: $rc"
    ((rc != 0))
    note "exit $rc: $({ grep -m 1 -i 'error' "$msg" || tail -n 1 "$msg"; } | sed 's/^[0-9:]* //' | cut -c1-100)"
}

output_read_only() {
    mkdir -p "$WORKDIR/out-ro"
    own "$APP_UID:$APP_UID" "$WORKDIR/out-ro"
    expect_failure --volume "$WORKDIR/out-ro:/out:ro"
}

output_other_owner() {
    mkdir -p "$WORKDIR/out-root"
    own 0:0 "$WORKDIR/out-root"
    chmod 755 "$WORKDIR/out-root"
    expect_failure --volume "$WORKDIR/out-root:/out"
}

# -------------------------------------------------------------------------- main ----
echo "container-smoke: repo $REPO, workdir $WORKDIR, image $IMAGE"
echo "container-smoke: buildah $(buildah --version | awk '{print $3}'), isolation chroot," \
     "storage ${STORAGE_DRIVER:-$(buildah info --format '{{.store.GraphDriverName}}' 2> /dev/null || echo default)}," \
     "wheels $WHEELS, CA bundle $CA_BUNDLE, runs in the image: ${NO_NETWORK[*]:-host network}"
if ((NEED_BASE)); then
    run_step "debootstrap $SUITE (minbase + python3)" debootstrap_base
    [[ ${STATUS[-1]} == pass ]] && run_step "import base image" import_base
else
    skip_step "debootstrap $SUITE (minbase + python3)" "reusing $BASE_IMAGE (--rebuild-base to make it again)"
fi
if ((!FAILED)); then
    run_step "build image (buildah bud, WITH_FSL=0)" build_image
fi
if ((!FAILED)); then
    run_step "image size, config, working container" image_facts
fi
if ((!FAILED)); then
    run_step "default user is UID $APP_UID" default_user
    run_step "bids-harmony --version" show_version
    run_step "bids-harmony --help" show_help
    run_step "simulate tiny study (in the image)" simulate
fi
if [[ ${STATUS[-1]} == pass ]]; then
    FIRST_PARTICIPANT=${PARTICIPANTS[0]:-$(find "$SIM/bids" -maxdepth 1 -name 'sub-*' -printf '%f\n' | sort | head -n 1)}
    FIRST_PARTICIPANT=${FIRST_PARTICIPANT#sub-}
    run_step "input bound read-only" input_read_only
    run_step "participant level (input read-only)" participant
    run_step "output bound read-only: must fail" output_read_only
    run_step "output not writable by UID $APP_UID: must fail" output_other_owner
fi

{
    echo
    echo "container-smoke summary ($(date -u +%FT%TZ), $(nproc) CPUs, image $IMAGE)"
    for i in "${!NAMES[@]}"; do
        printf '  %-4s %8s s  %-44s %s\n' "${STATUS[i]}" "${TIMES[i]}" "${NAMES[i]}" "${NOTES[i]}"
    done
    echo "  logs: $LOGS"
    ((FAILED)) && echo "  RESULT: FAIL" || echo "  RESULT: pass"
} | tee "$LOGS/summary.txt"
exit "$FAILED"
