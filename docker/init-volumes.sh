#!/bin/sh
# Run once, as root, before the Flower containers start (compose's `init` service): Flower's images run as user
# `app` (uid 49999), while the files an operator makes on the host belong to the host user (private keys 0600) and
# new named volumes and bind mounts belong to root. This copies each secret into a volume owned by the uid, 0400,
# makes each writable folder the uid's, and makes the SuperExec secret inside its volume (it never exists on the
# host). Kept files are never replaced by a new secret: restarts keep the node's identity and state.
#
#   init-volumes.sh UID SPEC...
#     file:SRC:DST     copy SRC to DST, owned by UID, mode 0400 (a private key, or a certificate)
#     dir:DST          DST (a volume or bind mount the service writes) owned by UID, mode 0700
#     secret:DST       DST, 64 random hex characters, owned by UID, mode 0400; kept if it exists
set -eu
uid="$1"
shift
for spec in "$@"; do
  kind="${spec%%:*}"
  rest="${spec#*:}"
  case "$kind" in
    file)
      src="${rest%%:*}"
      dst="${rest#*:}"
      [ -f "$src" ] || { echo "init-volumes: $src is missing (see the README's steps)" >&2; exit 2; }
      mkdir -p "$(dirname "$dst")"
      cp "$src" "$dst.tmp"
      chown "$uid:$uid" "$dst.tmp"
      chmod 0400 "$dst.tmp"
      mv -f "$dst.tmp" "$dst"
      chown "$uid:$uid" "$(dirname "$dst")"
      ;;
    dir)
      mkdir -p "$rest"
      chown "$uid:$uid" "$rest"
      chmod 0700 "$rest"
      ;;
    secret)
      mkdir -p "$(dirname "$rest")"
      if [ ! -s "$rest" ]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$rest")
      fi
      chown "$uid:$uid" "$rest" "$(dirname "$rest")"
      chmod 0400 "$rest"
      ;;
    *)
      echo "init-volumes: unknown spec $spec" >&2
      exit 2
      ;;
  esac
done
echo "init-volumes: ${#} item(s) ready for uid $uid"
