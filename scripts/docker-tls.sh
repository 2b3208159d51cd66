#!/usr/bin/env bash
# Certificates for the second test engine's TLS endpoint (scripts/swarm.sh), made once:
#   scripts/docker-tls.sh DIR ADDRESS
# DIR gets ca.pem, server-cert.pem, server-key.pem (for dockerd --tlsverify) and cert.pem,
# key.pem (a client's, with ca.pem: what $DOCKER_CERT_PATH holds for the docker CLI and SDK).
# The server certificate names ADDRESS. Test certificates only: 30 days' validity (made
# again when the client's has less than a day left), no passphrase.
set -euo pipefail
DIR=$1
ADDRESS=$2
if [ -e "$DIR/cert.pem" ] && openssl x509 -checkend 86400 -noout -in "$DIR/cert.pem" \
    >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=modelberth test CA" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$ADDRESS" -keyout server-key.pem \
  -out server.csr 2>/dev/null
printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$ADDRESS" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
  -extfile server.ext -out server-cert.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=client" -keyout key.pem -out client.csr \
  2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
  -extfile client.ext -out cert.pem 2>/dev/null
rm -f server.csr client.csr server.ext client.ext
chmod 600 ./*key.pem
