#!/usr/bin/env bash
# Build the helexa-cortex RPMs from this checkout.
#
#   rpm/build.sh [OUTDIR] [options]          OUTDIR defaults to dist/rpm (git-ignored)
#
# Always: Source0 (helexa-cortex-VERSION.tar.gz, the checkout's files as git sees them: tracked
# plus untracked-but-not-ignored, so uncommitted work is included), both source RPMs
# (rpmbuild -bs) and, unless --srpm-only, the binary cortex RPM (rpmbuild -bb rpm/cortex.spec).
# Results: OUTDIR/SRPMS/*.src.rpm and OUTDIR/RPMS/<arch>/*.rpm (OUTDIR is rpmbuild's _topdir).
#
# Options:
#   --srpm-only               source RPMs only
#   --neuron GPU_ARCH         also build the binary neuron RPM for ampere|ada|hopper|blackwell|cpu
#                             (compiles llama.cpp: long; CUDA variants need the CUDA toolkit)
#   --wheelhouse DIR          build offline: pip installs only from DIR (--define wheelhouse)
#   --fetch-wheelhouse DIR    fill DIR with everything the builds need from PyPI, then exit
#   --python PATH             system interpreter for the bundled venvs (default: /usr/bin/python3
#                             when it is >= 3.11, else the newest /usr/bin/python3.1x)
#   -D 'MACRO VALUE'          pass --define 'MACRO VALUE' to rpmbuild (repeatable), e.g.
#                             -D 'cuda_arch 80;86' -D 'cuda_version 12.6'
#
# On hosts whose RPM database is not the system's package database (Debian/Ubuntu with the rpm
# package, as in CI) BuildRequires cannot be checked, so rpmbuild runs with --nodeps there; the
# specs define the Fedora macros they use (%systemd_post, %sysusers_create_compat, ...) when the
# build host lacks them.
set -euo pipefail
# The builds use the system interpreter; a caller's virtualenv or Python path must not leak in.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="" srpm_only=0 neuron_arch="" wheelhouse="" fetch="" python="" defines=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --srpm-only) srpm_only=1 ;;
        --neuron) neuron_arch="$2"; shift ;;
        --wheelhouse) wheelhouse="$(cd "$2" && pwd)"; shift ;;
        --fetch-wheelhouse) fetch="$2"; shift ;;
        --python) python="$2"; shift ;;
        -D) defines+=(--define "$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) out="$1" ;;
    esac
    shift
done

pick_python() {
    local candidate
    for candidate in /usr/bin/python3 /usr/bin/python3.14 /usr/bin/python3.13 /usr/bin/python3.12 \
        /usr/bin/python3.11; do
        if [ -x "$candidate" ] && "$candidate" -c \
            'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "build.sh: no system Python >= 3.11 with venv and ensurepip; use --python" >&2
    exit 1
}
python="${python:-$(pick_python)}"
version="$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")"

if [ -n "$fetch" ]; then
    # Everything %build installs with pip: the runtime dependencies of both packages (binary
    # wheels; llama-cpp-python as its sdist, compiled by the neuron build), and the build
    # backends of the project and of llama-cpp-python (pip does not download those by itself).
    mkdir -p "$fetch"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$python" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip download --disable-pip-version-check --progress-bar off \
        --dest "$fetch" --no-binary llama-cpp-python \
        "$root[neuron]" "setuptools>=68" wheel "scikit-build-core[pyproject]" cmake ninja
    # `pip download .` leaves the project itself as an archive: it is built from Source0 instead.
    rm -f "$fetch"/helexa_cortex-* "$fetch"/helexa-cortex-*
    echo "wheelhouse: $fetch ($(ls "$fetch" | wc -l) files)"
    exit 0
fi

command -v rpmbuild >/dev/null || { echo "build.sh: rpmbuild not found" >&2; exit 1; }
out="$(mkdir -p "${out:-$root/dist/rpm}" && cd "${out:-$root/dist/rpm}" && pwd)"
mkdir -p "$out"/{SOURCES,SRPMS,RPMS,BUILD}

# Source0: the files git would commit, under helexa-cortex-VERSION/.
tarball="$out/SOURCES/helexa-cortex-$version.tar.gz"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Deleted files are skipped, and so is OUTDIR when it lies inside the checkout unignored.
    skip="$(realpath --relative-to="$root" "$out")/"
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            if [ -e "$f" ] && [ "${f#"$skip"}" = "$f" ]; then printf '%s\0' "$f"; fi
        done \
        | tar --null --files-from=- --sort=name --owner=0 --group=0 --numeric-owner \
            --transform "s,^,helexa-cortex-$version/," -czf "$tarball")
else
    tar -C "$root" --exclude-vcs --exclude=.venv --exclude=dist --exclude=build \
        --exclude='__pycache__' --exclude='*.egg-info' --sort=name --owner=0 --group=0 \
        --numeric-owner --transform "s,^\.,helexa-cortex-$version," -czf "$tarball" .
fi
cp "$root/conf/sysusers/cortex.conf" "$out/SOURCES/cortex.sysusers"
cp "$root/conf/sysusers/neuron.conf" "$out/SOURCES/neuron.sysusers"

args=(--define "_topdir $out" --define "pkg_version $version" --define "python3_bin $python")
[ -n "$wheelhouse" ] && args+=(--define "wheelhouse $wheelhouse")
# BuildRequires can only be checked against an RPM-based host's package database.
rpm -q rpm >/dev/null 2>&1 || args+=(--nodeps)
args+=("${defines[@]}")

neuron_args=()
[ -n "$neuron_arch" ] && neuron_args=(--define "gpu_arch $neuron_arch")

set -x
rpmbuild -bs "${args[@]}" "$here/cortex.spec"
rpmbuild -bs "${args[@]}" "${neuron_args[@]}" "$here/helexa-neuron.spec"
if [ "$srpm_only" = 0 ]; then
    rpmbuild -bb --clean "${args[@]}" "$here/cortex.spec"
fi
if [ -n "$neuron_arch" ]; then
    rpmbuild -bb --clean "${args[@]}" "${neuron_args[@]}" "$here/helexa-neuron.spec"
fi
