#!/usr/bin/env bash
# Installs the Debian packages ds4 needs to build and test, only when missing.
# Run as root (or with sudo available); non-interactive.
set -euo pipefail
PKGS="build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev libcmocka-dev
      libmicrohttpd-dev libgif-dev libpng-dev"
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm (Hugging Face tokenizer and OpenAI-client tests): any install
# that provides both commands will do (some ship npm inside their nodejs package).
if ! command -v node >/dev/null 2>&1; then missing+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "ds4: installing missing packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
