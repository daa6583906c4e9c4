#!/usr/bin/env bash
# Makes a self-signed certificate for a first start: certs/server.crt and
# certs/server.key (PKCS#8), readable by the container's uid 1001.
# WeCom does not accept a self-signed certificate for a real callback URL.
set -euo pipefail

case "${1:-}" in
  -h | --help)
    echo "Usage: self-signed-cert.sh [HOSTNAME] [DIR]   (defaults: localhost, ./certs)"
    exit 0
    ;;
esac
host=${1:-localhost}
dir=${2:-certs}
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 365 \
  -subj "/CN=$host" -addext "subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1" \
  -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
chmod 640 "$dir/server.key"
chown 1001:1001 "$dir/server.key" "$dir/server.crt" 2>/dev/null || echo "note: run as root (or chown 1001:1001 $dir/server.*) so the container can read the key"
echo "wrote $dir/server.crt and $dir/server.key for $host"
