#!/bin/sh
# certbot deploy hook for callrelay: after a certificate is issued or renewed, copy it
# where the services can read it and make both services load it (SIGHUP, no dropped
# calls).
#
# Why a copy: certbot keeps private keys root-only (0600) under /etc/letsencrypt/archive,
# and the services run as unprivileged users. The copy is root:callrelay 0640, so only
# root and the two callrelay service users read it.
#
# It acts only for the certificates named in /etc/callrelay/acme-domains (one certbot
# lineage name per line, # comments allowed): certbot runs every hook in
# renewal-hooks/deploy for EVERY certificate it renews on the host, and copying another
# one (Mattermost's own on a shared host) would make the services serve the wrong name.
# With no name configured it copies nothing and says so.
#
# Install:
#   echo turn.example.com > /etc/callrelay/acme-domains
#   install -m 0755 callrelay-reload.sh /etc/letsencrypt/renewal-hooks/deploy/
#   certbot certonly --standalone -d turn.example.com
# Then point both configs at the copies:
#   cert = "/etc/callrelay/tls/fullchain.pem"   key = "/etc/callrelay/tls/privkey.pem"
# and run the hook once by hand for the current certificate:
#   RENEWED_LINEAGE=/etc/letsencrypt/live/turn.example.com \
#       /etc/letsencrypt/renewal-hooks/deploy/callrelay-reload.sh
#
# Settings (environment; the defaults suit the .deb):
#   CALLRELAY_DOMAIN    the one lineage name to act for; overrides the names file
#   CALLRELAY_DOMAINS_FILE  the names file (default /etc/callrelay/acme-domains)
#   CALLRELAY_TLS_DIR   destination directory (default /etc/callrelay/tls)
#   CALLRELAY_GROUP     group that may read the copies (default callrelay)
#   CALLRELAY_SERVICES  units to reload (default "callrelay-turn callrelay-gateway")
#   SYSTEMCTL           systemctl command (default systemctl)
# certbot sets RENEWED_LINEAGE (the live/ directory of the renewed certificate).
set -eu

lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE is not set: run from certbot --deploy-hook, or set it to /etc/letsencrypt/live/NAME}
names_file=${CALLRELAY_DOMAINS_FILE:-/etc/callrelay/acme-domains}
dest=${CALLRELAY_TLS_DIR:-/etc/callrelay/tls}
group=${CALLRELAY_GROUP:-callrelay}
services=${CALLRELAY_SERVICES:-callrelay-turn callrelay-gateway}
systemctl=${SYSTEMCTL:-systemctl}

name=$(basename "$lineage")
source=$names_file
if [ -n "${CALLRELAY_DOMAIN:-}" ]; then
    names=$CALLRELAY_DOMAIN
    source=CALLRELAY_DOMAIN
elif [ -r "$names_file" ]; then
    names=$(sed -e 's/#.*//' "$names_file")
else
    names=
fi
if [ -z "$(echo "$names" | tr -d ' \t\n')" ]; then
    echo "callrelay-reload: no certificate names configured (put the lineage name, e.g. $name, in $names_file): not copying $name" >&2
    exit 0 # not an error for certbot: the other certificates renew normally
fi
found=0
for n in $names; do
    if [ "$n" = "$name" ]; then found=1; fi
done
if [ $found = 0 ]; then
    echo "callrelay-reload: $name is not one of callrelay's certificates ($source): ignored" >&2
    exit 0
fi

for f in fullchain.pem privkey.pem; do
    if ! grep -q -- '-----BEGIN ' "$lineage/$f" 2>/dev/null; then
        echo "callrelay-reload: $lineage/$f is missing or not PEM; nothing changed" >&2
        exit 1
    fi
done

install -d -m 0750 -o root -g "$group" "$dest"
# Write both files under temporary names first, then rename each into place: no reader
# ever sees a half-written file. The services read the pair only at start and on SIGHUP,
# which comes below, after both are in place.
install -m 0640 -o root -g "$group" "$lineage/fullchain.pem" "$dest/.fullchain.pem.new"
install -m 0640 -o root -g "$group" "$lineage/privkey.pem" "$dest/.privkey.pem.new"
mv -f "$dest/.privkey.pem.new" "$dest/privkey.pem"
mv -f "$dest/.fullchain.pem.new" "$dest/fullchain.pem"

# Reload only what runs (try-reload-or-restart does nothing for a stopped unit; on a
# TURN-only node set CALLRELAY_SERVICES=callrelay-turn). If one reload fails, still
# reload the others, then exit non-zero so certbot logs the failure.
status=0
for s in $services; do
    if ! $systemctl try-reload-or-restart "$s"; then
        echo "callrelay-reload: reloading $s failed; run: systemctl status $s" >&2
        status=1
    fi
done
exit $status
