#!/bin/bash
# Prepares the Ironic end-to-end run (docs/ironic-e2e.md): installs Debian's ironic-api and
# ironic-conductor (21.4) and the disk tools when missing, without starting or enabling any system
# service; then, in a fresh scratch dir ($IRONBUS_E2E_DIR, default /tmp/ironbus-ironic-e2e): the
# Ironic config, the sqlite schema, a 64 MiB raw whole-disk test image (MBR + ext4 with a marker
# file), dummy deploy kernel/ramdisk, a harmless power script, and a 4 GiB sparse loop device: the
# only device the agent will be allowed to touch. Needs root. Undo with teardown.sh.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (apt-get, losetup)"
[ -e "$D" ] && die "$D exists: run teardown.sh first"

# --- packages ---------------------------------------------------------------------------------
need=()
[ -x /usr/bin/ironic-api ] || need+=(ironic-api)
[ -x /usr/bin/ironic-conductor ] || need+=(ironic-conductor)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v parted >/dev/null || need+=(parted)
command -v partprobe >/dev/null || need+=(parted)
command -v sgdisk >/dev/null || need+=(gdisk)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v curl >/dev/null || need+=(curl)
[ -x "$PY" ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  # Keep package services from starting (Debian's invoke-rc.d honours policy-rc.d).
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" > "${TMPDIR:-/tmp}/ironbus-e2e-apt.log" 2>&1 \
    || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install ${need[*]} failed: see ${TMPDIR:-/tmp}/ironbus-e2e-apt.log"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
ironic_version=$(dpkg-query -W -f '${Version}' ironic-conductor 2>/dev/null || echo unknown)
log "ironic-conductor $ironic_version"

# The packaged services must not run or be enabled: with systemd, stop and disable them.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for u in ironic-api ironic-conductor; do
    systemctl disable --now "$u" >/dev/null 2>&1 || true
  done
  log "systemd: ironic-api and ironic-conductor stopped and disabled"
fi
# No Ironic may already listen where ours will (we never stop processes we did not start).
for port in $IRONIC_PORT $JSONRPC_PORT $IMG_PORT $AGENT_PORT; do
  if ss -Hltn "sport = :$port" | grep -q .; then die "127.0.0.1:$port is already in use: $(ss -Hltnp "sport = :$port")"; fi
done

# --- scratch dir, config, database --------------------------------------------------------------
mkdir -p "$D"/{logs,tmp,locks,httpboot,tftpboot/master_images,images,master,agent-certs,agent-tls,imgsrv,rootfs}
sed -e "s|@SCRATCH@|$D|g" -e "s|@IRONIC_PORT@|$IRONIC_PORT|g" -e "s|@JSONRPC_PORT@|$JSONRPC_PORT|g" \
    -e "s|@HTTPBOOT_PORT@|$((IMG_PORT + 1))|g" "$E2E_HERE/ironic-e2e.conf" > "$D/ironic.conf"
t0=$(now_ms)
ironic-dbsync --config-file "$D/ironic.conf" create_schema > "$D/logs/dbsync.log" 2>&1 || die "ironic-dbsync failed: $(tail -3 "$D/logs/dbsync.log")"
log "sqlite schema created in $(( $(now_ms) - t0 )) ms"

# --- the image: 64 MiB, MBR (disk id 0x1b05e2e0) with one ext4 partition holding MARKER ---------
cd "$D"
echo "ironbus e2e marker $(date -u +%FT%TZ)" > rootfs/MARKER
truncate -s 64M imgsrv/disk.img
printf 'label: dos\nlabel-id: 0x1b05e2e0\nstart=2048, type=83\n' | sfdisk -q imgsrv/disk.img
truncate -s $((64 * 1024 * 1024 - 2048 * 512)) part.img
mkfs.ext4 -q -L ironbus-e2e -E root_owner=0:0 -d rootfs part.img
dd if=part.img of=imgsrv/disk.img bs=512 seek=2048 conv=notrunc,sparse status=none
rm -f part.img
sha256sum imgsrv/disk.img | cut -d' ' -f1 > image.sha256
# pxe's prepare_ramdisk caches these two; file:// outside /var/lib/ironic is refused, so http.
head -c 4096 /dev/urandom > imgsrv/deploy.kernel
head -c 4096 /dev/urandom > imgsrv/deploy.initramfs

# --- harmless power commands for the agent (standby.power_off / run_image would run them) ------
cat > fake-power.sh <<EOF
#!/bin/sh
echo "\$(date -u +%FT%T) fake power command: \$*" >> "$D/power-marker"
EOF
chmod +x fake-power.sh

# --- the target: a sparse 4 GiB file on a loop device with partition scanning -------------------
truncate -s 4G target.img
loop=$(losetup -P -f --show "$D/target.img")
[[ "$loop" =~ ^/dev/loop[0-9]+$ ]] || die "losetup gave '$loop'"
echo "$loop" > loop.dev
log "image sha256 $(cat image.sha256); target $loop -> $D/target.img"
log "setup done: $D"
