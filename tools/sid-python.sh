#!/usr/bin/env bash
# Run a command under a Python that Debian 12 does not have (3.14, 3.15; 3.12 or 3.13 where pyenv
# is absent), inside a Debian unstable ("sid") chroot built from Debian's binary packages.
#
#   tools/sid-python.sh build               make the chroot once (debootstrap, about a minute);
#                                           later calls find it and do nothing
#   tools/sid-python.sh run X.Y CMD [ARG...]
#                                           run CMD in this checkout, inside the chroot, with the
#                                           venv of Python X.Y first on PATH (made on first use:
#                                           the project editable with its test extra, or what
#                                           SCOOPEXEC_SID_INSTALL says, pinned by
#                                           .ci/constraints.txt; remade when that, pyproject.toml
#                                           or the constraints change)
#   tools/sid-python.sh has X.Y             exit 0 if Debian sid packages Python X.Y (installs it)
#   tools/sid-python.sh remove              delete the chroot (nothing is mounted outside a run)
#
# Why a chroot: sid's python3.14 and python3.15 need a newer glibc than Debian 12's, so they do not
# run on the host; pyenv and similar tools cannot download interpreters here (see the README,
# "Supported Pythons").
#
# Mounts: each `run` enters a private mount namespace (unshare -m), binds /proc, /dev, /sys and this
# checkout (at the same path, so an editable install and tracebacks name the same files) into the
# chroot, and runs CMD there.  The mounts belong to that namespace only: they disappear when CMD
# exits, however it exits (signal included), and the host never sees them, so two runs at once do
# not disturb each other and nothing is left to unmount.
#
# Needs root (debootstrap, chroot, mount).  Settings (environment):
#   SCOOPEXEC_SID_ROOT    where the chroot lives (default /var/cache/scoopexec/sid)
#   SCOOPEXEC_SID_MIRROR  Debian mirror (default: the one the host's apt sources use)
#   SCOOPEXEC_SID_INSTALL what pip installs in the venv (default: -e .[test])
set -euo pipefail

ROOT=${SCOOPEXEC_SID_ROOT:-/var/cache/scoopexec/sid}
INSTALL=${SCOOPEXEC_SID_INSTALL:--e .[test]}
PROJECT=$(cd "$(dirname "$0")/.." && pwd -P)
die() { echo "sid-python: ERROR: $*" >&2; exit 2; }
note() { echo "sid-python: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mount); run it as root"

mirror() {
  if [ -n "${SCOOPEXEC_SID_MIRROR:-}" ]; then echo "$SCOOPEXEC_SID_MIRROR"; return; fi
  local m
  # deb822 sources (Debian 12's default), then the one-line format
  m=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

host_apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The files the chroot takes from the host at every run: name resolution, the CA bundle and pip's
# settings (the machines reach PyPI through what /etc/pip.conf and PIP_* say).
refresh_host_files() {
  local f
  for f in /etc/resolv.conf /etc/hosts /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
    [ -e "$f" ] || continue
    mkdir -p "$ROOT$(dirname "$f")"
    cp -L "$f" "$ROOT$f"
  done
}

build() {
  [ -x "$ROOT/usr/bin/apt-get" ] && [ -e "$ROOT/.scoopexec-built" ] && return 0
  command -v debootstrap >/dev/null || host_apt_install debootstrap || die "could not install debootstrap"
  local m t
  m=$(mirror)
  t=$(date +%s)
  note "building the Debian sid chroot in $ROOT from $m (about a minute; done once)"
  rm -rf "$ROOT.new"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=ca-certificates,python3.14,python3.14-venv \
    sid "$ROOT.new" "$m" >"$ROOT.new.log" 2>&1 \
    || { tail -20 "$ROOT.new.log" >&2; die "debootstrap failed (log: $ROOT.new.log)"; }
  rm -rf "$ROOT"
  mv "$ROOT.new" "$ROOT"
  mv "$ROOT.new.log" "$ROOT/.scoopexec-debootstrap.log"
  # The mirror may serve sid's index some weeks after its Release file's Valid-Until (a dated
  # snapshot): apt then refuses to update from it; the packages are still the signed ones.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99scoopexec"
  touch "$ROOT/.scoopexec-built"
  note "chroot built in $(( $(date +%s) - t )) s"
}

# in_chroot CMD...: run CMD (a shell command line) inside the chroot in a private mount namespace.
in_chroot() {
  refresh_host_files
  mkdir -p "$ROOT$PROJECT"
  # shellcheck disable=SC2016
  unshare --mount --propagation private -- /bin/sh -ec '
    root=$1 project=$2; shift 2
    mount --rbind /proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    mount --bind "$project" "$root$project"
    exec chroot "$root" /usr/bin/env -u PIP_FIND_LINKS PATH="$VENV_PATH" /bin/sh -ec "$@"
  ' sid-python "$ROOT" "$PROJECT" "$@"
}

ensure_python() {  # ensure_python X.Y: the interpreter, its venv module and its own test package
  local v=$1
  [ -x "$ROOT/usr/bin/python$v" ] && [ -e "$ROOT/usr/lib/python$v/ensurepip/__init__.py" ] \
    && [ -d "$ROOT/usr/lib/python$v/test/test_concurrent_futures" ] && return 0
  note "installing python$v in the chroot"
  # libpython3.X-testsuite: CPython's own concurrent.futures tests (tests/run_upstream_suites.py)
  VENV_PATH=/usr/sbin:/usr/bin:/sbin:/bin in_chroot "
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-cache show python$v python$v-venv >/dev/null 2>&1 || exit 3
    apt-get install -y -qq --no-install-recommends python$v python$v-venv libpython$v-testsuite >/dev/null
  " || return 1
}

# One venv per checkout and Python (the editable install points at the checkout):
# /venvs/<hash of the checkout's path>-pyX.Y.  Venvs of checkouts that no longer exist (CI's clones)
# are removed as new ones are made.
venv_of() { echo "/venvs/$(printf %s "$PROJECT" | sha256sum | cut -c1-12)-py$1"; }

ensure_venv() {  # ensure_venv X.Y: the venv with the project installed, current with pyproject
  local v=$1 venv stamp want d
  venv=$(venv_of "$v")
  want=$( (echo "$INSTALL"; cat "$PROJECT/pyproject.toml" "$PROJECT/.ci/constraints.txt" \
    "$PROJECT/.ci/core-tests.txt") | sha256sum | cut -c1-16)
  stamp="$ROOT$venv/.scoopexec-stamp"
  [ -e "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  for d in "$ROOT"/venvs/*/; do
    [ -e "$d.scoopexec-project" ] && [ ! -d "$(cat "$d.scoopexec-project")" ] && rm -rf "$d"
  done
  note "making the venv for Python $v: pip install $INSTALL"
  VENV_PATH=/usr/sbin:/usr/bin:/sbin:/bin in_chroot "
    rm -rf $venv
    python$v -m venv $venv
    cd '$PROJECT'
    $venv/bin/python -m pip install -q -U pip
    set -f  # INSTALL's words as given: no globbing of .[test]
    $venv/bin/python -m pip install -q -c .ci/constraints.txt $INSTALL
  " || die "could not make the venv for Python $v in the chroot"
  echo "$PROJECT" >"$ROOT$venv/.scoopexec-project"
  echo "$want" >"$stamp"
}

cmd=${1:-}
case "$cmd" in
  build)
    mkdir -p "$(dirname "$ROOT")"; exec 9>"$ROOT.lock"; flock 9
    build
    ;;
  has)
    [ $# = 2 ] || die "usage: $0 has X.Y"
    mkdir -p "$(dirname "$ROOT")"; exec 9>"$ROOT.lock"; flock 9
    build
    ensure_python "$2"
    ;;
  run)
    [ $# -ge 3 ] || die "usage: $0 run X.Y CMD [ARG...]"
    v=$2; shift 2
    [[ "$v" =~ ^3\.[0-9]+$ ]] || die "Python version must look like 3.14, not '$v'"
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock 9  # one build, one install at a time; released before CMD runs
    build
    ensure_python "$v" || die "Debian sid has no python$v package: Python $v cannot be had this way"
    ensure_venv "$v"
    flock -u 9
    exec 9>&-
    # CMD's words are passed through as "$@" of the inner shell, quoted as given
    venv=$(venv_of "$v")
    VENV_PATH=$venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      in_chroot "cd '$PROJECT'; export VIRTUAL_ENV=$venv HOME=/root; exec \"\$@\"" sid-run "$@"
    ;;
  remove)
    rm -rf "$ROOT" "$ROOT.new" "$ROOT.lock"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
