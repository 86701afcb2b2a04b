#!/bin/bash
# Builds the Linux guest of the `linux-*` e2e tests from Debian's own
# packages, nothing checked in and nothing installed system-wide:
#   - the kernel: the `linux-image-6.1.0-*-amd64` that apt resolves for
#     `linux-image-amd64`, fetched with `apt-get download`, unpacked with
#     `dpkg-deb -x`; its bzImage is copied to $OUT/bzImage;
#   - the initramfs: `busybox-static`, the kernel's virtio modules and a
#     tiny /init (mount proc/sys, load the virtio-mmio drivers, print
#     markers, with `ftvisor.net=loop` on the kernel command line a ping
#     to its own address through the looped-back NIC, `poweroff -f`),
#     packed with `cpio -o -H newc | gzip` into $OUT/initrd-<hash of /init
#     and the module list>.gz.
# Everything lives in a cache outside the repository
# (default ~/.cache/ftvisor/linux); a second run reuses it.
# Prints the two paths on its last two lines.
set -euo pipefail
CACHE=${FTVISOR_LINUX_CACHE:-$HOME/.cache/ftvisor/linux}
OUT=$CACHE/out
mkdir -p "$CACHE/debs" "$OUT"
if [ ! -s "$OUT/bzImage" ] || [ ! -d "$CACHE/busybox" ] || [ "${1:-}" = "--force" ]; then
    cd "$CACHE/debs"
    # The versioned image package that linux-image-amd64 depends on.
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -1)
    [ -n "$KPKG" ] || KPKG=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' |
        awk '{print $1}' | sort -V | tail -1)
    [ -n "$KPKG" ] || { echo "build.sh: apt knows no linux-image-6.1.0-*-amd64 (run apt-get update)" >&2; exit 1; }
    ls "$KPKG"_*.deb >/dev/null 2>&1 || apt-get download "$KPKG" >&2
    ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static >&2
    rm -rf "$CACHE/kernel" "$CACHE/busybox" "$CACHE/root"
    dpkg-deb -x "$(ls "$KPKG"_*.deb | head -1)" "$CACHE/kernel"
    dpkg-deb -x "$(ls busybox-static_*.deb | head -1)" "$CACHE/busybox"
    cp "$(ls "$CACHE"/kernel/boot/vmlinuz-* | head -1)" "$OUT/bzImage"
    echo "$KPKG" >"$OUT/kernel-package"
fi
# The initramfs, rebuilt whenever this script's /init or module list changes.
KVER=$(ls "$CACHE/kernel/lib/modules" | head -1)
MODS="kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_mmio.ko kernel/drivers/block/virtio_blk.ko
kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko kernel/drivers/net/virtio_net.ko"
INIT=$(cat <<'INIT'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "FTVISOR-LINUX-INIT: $(/bin/busybox uname -r) up $(/bin/busybox cat /proc/uptime)"
echo "FTVISOR-LINUX-CLOCK: $(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
# The virtio-mmio devices the DSDT announces (LNRO0005), drivers from Debian.
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
    /bin/busybox insmod /lib/modules/$m.ko 2>&1 | while read l; do echo "FTVISOR-LINUX-INSMOD: $m: $l"; done
done
/bin/busybox ls /sys/bus/virtio/devices 2>/dev/null | while read d; do
    echo "FTVISOR-LINUX-VIRTIO: $d device $(/bin/busybox cat /sys/bus/virtio/devices/$d/device) driver $(/bin/busybox basename $(/bin/busybox readlink /sys/bus/virtio/devices/$d/driver) 2>/dev/null)"
done
/bin/busybox grep virtio /proc/interrupts | while read l; do echo "FTVISOR-LINUX-IRQ: $l"; done
[ -e /sys/block/vda/size ] && echo "FTVISOR-LINUX-VDA: $(/bin/busybox cat /sys/block/vda/size) sectors"
# Absent hardware: nothing decodes 0xFED00000 (no HPET here): all ones.
echo "FTVISOR-LINUX-ABSENT: $(/bin/busybox devmem 0xfed00000 32 2>&1)"
# ftvisor.net=loop (guest_net=loopback): the NIC's frames come back to it.
# Route traffic to our own address out of eth0 (a "loopback cable"):
# locally generated packets use table 100 (via eth0, to our own MAC), the
# looped frames arrive on eth0 and are delivered locally.
if /bin/busybox grep -q ftvisor.net=loop /proc/cmdline; then
    B=/bin/busybox
    A=10.0.2.15
    $B ip link set lo up
    $B ip link set eth0 up
    $B ip addr add $A/24 dev eth0
    for f in all/rp_filter eth0/rp_filter; do echo 0 >/proc/sys/net/ipv4/conf/$f; done
    echo 1 >/proc/sys/net/ipv4/conf/eth0/accept_local
    $B ip neigh replace $A lladdr $($B cat /sys/class/net/eth0/address) dev eth0 nud permanent
    $B ip rule add pref 10 iif lo table 100
    $B ip route add $A dev eth0 table 100
    $B ip rule add pref 20 table local
    $B ip rule del pref 0
    $B ping -c 10 -i 0.05 -s 1000 $A 2>&1 | while read l; do echo "FTVISOR-LINUX-NET: $l"; done
    echo "FTVISOR-LINUX-NETSTAT: $($B cat /sys/class/net/eth0/statistics/rx_packets) rx $($B cat /sys/class/net/eth0/statistics/tx_packets) tx"
fi
BIGIO=$(/bin/busybox sed -n 's/.*ftvisor\.bigio=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$BIGIO" ]; then
    # linux-ft-bigio: round r (1..BIGIO, at most 8) fills the disk's
    # 8 MiB region r-1 with `seq -w r*10^6 r*10^6+1048575` (8-byte lines):
    # the first 4 MiB with O_DIRECT 2 MiB writes, the second buffered and
    # synced; then reads both back (O_DIRECT, and buffered after dropping
    # the page cache) and compares their MD5 with the pattern in RAM.
    B=/bin/busybox
    r=1
    while [ $r -le $BIGIO ]; do
        base=$((r * 1000000))
        $B seq -w $base $((base + 1048575)) >/tmp/pat
        $B head -c 4194304 /tmp/pat >/tmp/pa
        $B tail -c 4194304 /tmp/pat >/tmp/pb
        a=$($B md5sum </tmp/pa | $B cut -d' ' -f1)
        b=$($B md5sum </tmp/pb | $B cut -d' ' -f1)
        s=$(((r - 1) * 4))
        $B dd if=/tmp/pa of=/dev/vda bs=2M count=2 seek=$s oflag=direct conv=notrunc 2>/dev/null || echo "FTVISOR-BIGIO: round $r direct write failed"
        $B dd if=/tmp/pb of=/dev/vda bs=2M count=2 seek=$((s + 2)) conv=notrunc 2>/dev/null || echo "FTVISOR-BIGIO: round $r buffered write failed"
        $B sync
        ra=$($B dd if=/dev/vda bs=2M count=2 skip=$s iflag=direct 2>/dev/null | $B md5sum | $B cut -d' ' -f1)
        echo 3 >/proc/sys/vm/drop_caches
        rb=$($B dd if=/dev/vda bs=2M count=2 skip=$((s + 2)) 2>/dev/null | $B md5sum | $B cut -d' ' -f1)
        if [ "$ra" = "$a" ] && [ "$rb" = "$b" ]; then v=ok; else v="MISMATCH direct $ra want $a buffered $rb want $b"; fi
        echo "FTVISOR-BIGIO: round $r wrote and read 8388608 bytes: $v"
        $B rm -f /tmp/pat /tmp/pa /tmp/pb
        r=$((r + 1))
    done
    echo "FTVISOR-BIGIO: done $BIGIO rounds"
fi
HTTP=$(/bin/busybox sed -n 's/.*ftvisor\.http=\([0-9.]*\).*/\1/p' /proc/cmdline)
if [ -n "$HTTP" ]; then
    # linux-ft-http: busybox httpd serves /www/big, a file the client can
    # regenerate (seq -w 1 N: 7-byte lines), until the test ends the guest.
    B=/bin/busybox
    $B ip link set lo up
    $B ip link set eth0 up
    $B ip addr add $HTTP/24 dev eth0
    $B mkdir -p /www
    $B seq -w 1 400000 >/www/big
    echo "FTVISOR-LINUX-HTTP: serving /www/big ($($B wc -c </www/big) bytes) on $HTTP:80"
    exec $B httpd -f -p 80 -h /www
fi
echo "FTVISOR-LINUX-POWEROFF"
/bin/busybox poweroff -f
INIT
)
STAMP=$(printf '%s\n%s\n%s\n' "$KVER" "$MODS" "$INIT" | md5sum | cut -d' ' -f1)
# One file per /init version: worktrees with different /init scripts
# share the cache without rebuilding each other's initramfs.
INITRD=$OUT/initrd-$STAMP.gz
if [ ! -s "$INITRD" ]; then
    R=$CACHE/root-$STAMP
    rm -rf "$R"
    mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules}
    cp "$CACHE/busybox/bin/busybox" "$R/bin/busybox"
    for a in sh mount echo cat poweroff uname dmesg sleep ls ip ping grep devmem sed seq wc mkdir httpd; do ln -sf busybox "$R/bin/$a"; done
    for m in $MODS; do cp "$CACHE/kernel/lib/modules/$KVER/$m" "$R/lib/modules/"; done
    printf '%s\n' "$INIT" >"$R/init"
    chmod +x "$R/init"
    (cd "$R" && find . | cpio -o -H newc --quiet | gzip -9) >"$INITRD.$$"
    mv "$INITRD.$$" "$INITRD"
    rm -rf "$R"
fi
echo "$OUT/bzImage"
echo "$INITRD"
