#!/usr/bin/env bash
# Writes a throwaway CA and server and client certificates signed by it into DIR, for the
# TLS and mTLS tests: ca.pem, server.pem/server.key (valid for 127.0.0.1 and localhost),
# client.pem/client.key, and other-ca.pem with other-client.pem/.key from an unrelated CA.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
make_ca() {  # make_ca NAME
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days 2 \
    -subj "/CN=lserve test $1" 2>/dev/null
}
make_leaf() {  # make_leaf NAME CA EXTENSIONS
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days 2 -extfile "$1.ext" 2>/dev/null
}
make_ca ca
make_ca other-ca
make_leaf server ca "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
make_leaf client ca "extendedKeyUsage=clientAuth"
make_leaf other-client other-ca "extendedKeyUsage=clientAuth"
