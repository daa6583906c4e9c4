# Shared by benches/common.sh and benches/ab.sh (sourced, not run): a work
# directory removed on exit with every process listed in `pids`, the clean
# environment the service runs in, where its demo configuration goes, and the
# reference nginx's configuration.
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing script
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Nothing from the caller's environment or a .env reaches the service.
clean=(env -i "PATH=$PATH" "HOME=$work")
demo=$work/demo

# nginx_conf LISTEN_LINES: writes $work/nginx/nginx.conf for the reference: one
# worker, no access log, `return 200` on the server LISTEN_LINES configure.
nginx_conf() {
  mkdir -p "$work/nginx/tmp"
  cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server {
$1
    location / { return 200; }
  }
}
NGINX
}
