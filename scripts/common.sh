# shellcheck shell=bash
# Sourced by scripts/dev, scripts/test and .ci/run: puts the shell at the
# repository root, points cargo at a target directory outside the clone, and
# installs what RocksDB's build needs but a fresh Debian machine lacks.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 1

# Outside the clone, so that a fresh clone or `git clean` never throws away
# the 20-minute RocksDB build. Never delete it to "fix" a build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/raftmq/target}"
mkdir -p "$CARGO_TARGET_DIR"

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

apt_install() {
    echo "installing $* with apt-get" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

have_libclang() {
    # Not `ldconfig -p | grep -q`: with pipefail, grep quitting early can
    # make ldconfig die of SIGPIPE and the pipeline fail.
    # libclang itself, not libclang-cpp (which some machines have without it
    # and which bindgen cannot use).
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
        || { PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -E 'libclang(-[0-9.]+)?\.so' >/dev/null; }
}

# librocksdb-sys runs bindgen, which loads libclang, and compiles C++.
ensure_build_tools() {
    if [ -z "${LIBCLANG_PATH:-}" ] && ! have_libclang; then
        apt_install libclang-dev
    fi
    if ! command -v c++ >/dev/null; then
        apt_install g++
    fi
}

ensure_build_tools
