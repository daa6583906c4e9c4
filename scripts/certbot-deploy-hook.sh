#!/usr/bin/env bash
# certbot deploy hook: installs a newly issued or renewed Let's Encrypt certificate
# for wechat-api. certbot runs it after each successful issuance or renewal, with
# RENEWED_LINEAGE=/etc/letsencrypt/live/<host> and RENEWED_DOMAINS="<host> …".
#
#   certbot certonly --standalone -d wechat.example.com \
#     --deploy-hook /opt/wechat-api/scripts/certbot-deploy-hook.sh
#
# certbot remembers the hook for that certificate's renewals (and runs it right
# after the first issuance too). It copies fullchain.pem and privkey.pem to
# server.crt and server.key in the certificates directory, owned by the
# container's uid 1001 (key 0600), each renamed into place so the service never
# reads half a file. Nothing restarts: the service re-reads both files every
# SUPERVISOR_INTERVAL_SECS (30 s) and serves the new pair once it loads; a pair
# that does not load keeps the old one serving and the tls:certificate check warns.
#
# Settings (environment; put them before the path in --deploy-hook "…"):
#   WECHAT_API_CERTS_DIR   the certificates directory (CERTS_DIR of the compose
#                          files); default: certs/ beside this script's scripts/
#   WECHAT_API_CERTS_OWNER owner:group of the installed files; default 1001:1001
#   WECHAT_API_DOMAIN      install only the certificate naming this domain (for a
#                          hook in /etc/letsencrypt/renewal-hooks/deploy/, which
#                          certbot runs for every certificate of the machine)
set -euo pipefail

case "${1:-}" in
  -h | --help)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

lineage=${RENEWED_LINEAGE:?RENEWED_LINEAGE is not set: certbot sets it when it runs a deploy hook}
script_dir=$(cd "$(dirname "$0")" && pwd)
certs_dir=${WECHAT_API_CERTS_DIR:-$(dirname "$script_dir")/certs}
owner=${WECHAT_API_CERTS_OWNER:-1001:1001}

if [[ -n ${WECHAT_API_DOMAIN:-} ]]; then
  case " ${RENEWED_DOMAINS:-} " in
    *" $WECHAT_API_DOMAIN "*) ;;
    *) exit 0 ;; # another certificate of this machine
  esac
fi

for file in fullchain.pem privkey.pem; do
  [[ -r $lineage/$file ]] || {
    echo "certbot-deploy-hook: cannot read $lineage/$file" >&2
    exit 1
  }
done
mkdir -p "$certs_dir"

# install NAME SOURCE MODE: a temporary copy beside the target, then a rename.
install_file() {
  local target=$certs_dir/$1 source=$2 mode=$3 tmp
  tmp=$(mktemp "$certs_dir/.$1.XXXXXX")
  cp "$source" "$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$target"
}

# The key first: the service loads a pair only when the key matches the
# certificate, so in between it keeps serving the old pair.
install_file server.key "$lineage/privkey.pem" 600
install_file server.crt "$lineage/fullchain.pem" 644
echo "certbot-deploy-hook: installed $lineage into $certs_dir (owner $owner): served from the next check round (SUPERVISOR_INTERVAL_SECS, 30 s by default)"
