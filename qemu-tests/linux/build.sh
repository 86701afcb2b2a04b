#!/bin/bash
# Builds the Linux guest of the `linux-*` e2e tests from Debian's own
# packages, nothing checked in and nothing installed system-wide:
#   - the kernel: the `linux-image-6.1.0-*-amd64` that apt resolves for
#     `linux-image-amd64`, fetched with `apt-get download`, unpacked with
#     `dpkg-deb -x`; its bzImage is copied to $OUT/bzImage;
#   - the initramfs: `busybox-static` plus a tiny /init (mount proc/sys,
#     print a marker, `poweroff -f`), packed with `cpio -o -H newc | gzip`
#     into $OUT/initrd.gz.
# Everything lives in a cache outside the repository
# (default ~/.cache/ftvisor/linux); a second run reuses it.
# Prints the two paths on its last two lines.
set -euo pipefail
CACHE=${FTVISOR_LINUX_CACHE:-$HOME/.cache/ftvisor/linux}
OUT=$CACHE/out
mkdir -p "$CACHE/debs" "$OUT"
if [ ! -s "$OUT/bzImage" ] || [ ! -s "$OUT/initrd.gz" ] || [ "${1:-}" = "--force" ]; then
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
    R=$CACHE/root
    mkdir -p "$R"/{bin,dev,proc,sys,tmp}
    cp "$CACHE/busybox/bin/busybox" "$R/bin/busybox"
    for a in sh mount echo cat poweroff uname dmesg sleep ls; do ln -sf busybox "$R/bin/$a"; done
    cat >"$R/init" <<'INIT'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "FTVISOR-LINUX-INIT: $(/bin/busybox uname -r) up $(/bin/busybox cat /proc/uptime)"
echo "FTVISOR-LINUX-CLOCK: $(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
/bin/busybox ls /sys/bus/virtio/devices 2>/dev/null | while read d; do echo "FTVISOR-LINUX-VIRTIO: $d"; done
echo "FTVISOR-LINUX-POWEROFF"
/bin/busybox poweroff -f
INIT
    chmod +x "$R/init"
    (cd "$R" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initrd.gz"
fi
echo "$OUT/bzImage"
echo "$OUT/initrd.gz"
