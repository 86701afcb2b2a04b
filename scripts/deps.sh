#!/usr/bin/env bash
# Install what ftvisor needs to build and test (README "make deps").
# Idempotent: packages already present and a cached Bochs 3.0 are reused.
set -euo pipefail

BOCHS_PREFIX="${FTVISOR_BOCHS_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/ftvisor/bochs-3.0}"
PKGS=(qemu-system-x86 grub-pc-bin grub-common xorriso mtools bochsbios vgabios
      istgt libiscsi-bin iproute2 cpio build-essential tcpdump)

say() { printf '[deps] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
    if ! command -v sudo >/dev/null 2>&1; then
        say "error: not root and no sudo: run 'make deps' as root (it installs Debian packages)"
        exit 2
    fi
else
    SUDO=
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep packaged daemons (istgt) from starting on install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        REMOVE_POLICY=1
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ "${REMOVE_POLICY:-0}" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
else
    say "Debian packages present"
fi

STAMP="$BOCHS_PREFIX/.ftvisor-bochs-3.0-ok"
if [ -x "$BOCHS_PREFIX/bin/bochs" ] && [ -e "$STAMP" ]; then
    say "Bochs 3.0 cached at $BOCHS_PREFIX"
    exit 0
fi

say "building Bochs 3.0 from Debian 13's source package into $BOCHS_PREFIX (about 4-6 minutes)"
WORK="$(mktemp -d /tmp/ftvisor-bochs.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
[ -n "$MIRROR" ] || MIRROR="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
[ -n "$MIRROR" ] || MIRROR="http://deb.debian.org/debian"
mkdir -p "$WORK/lists/partial" "$WORK/src"
echo "deb-src [trusted=yes] $MIRROR trixie main" > "$WORK/sources.list"
APT=(apt-get -o Dir::Etc::sourcelist="$WORK/sources.list" -o Dir::Etc::sourceparts=-
     -o Dir::State::Lists="$WORK/lists" -o APT::Sandbox::User=root)
say "fetching source index for trixie from $MIRROR"
"${APT[@]}" update -qq
(cd "$WORK/src" && "${APT[@]}" source --download-only bochs) || true
ORIG="$(ls "$WORK"/src/bochs_3.0*.orig.tar.* 2>/dev/null | head -n1 || true)"
if [ -z "$ORIG" ]; then
    say "error: could not download bochs 3.0 orig tarball from $MIRROR (trixie)"
    exit 3
fi
say "unpacking $(basename "$ORIG")"
tar -C "$WORK/src" -xf "$ORIG"
SRC="$(find "$WORK/src" -maxdepth 1 -type d -name 'bochs*' | head -n1)"
cd "$SRC"
say "configuring"
./configure --prefix="$BOCHS_PREFIX" --enable-x86-64 --enable-cpu-level=6 \
    --enable-vmx=2 --enable-avx --enable-evex --enable-all-optimizations \
    --with-nogui --without-x11 --disable-plugins --enable-pci --enable-cdrom \
    --disable-debugger --disable-docbook --enable-ne2000 --enable-e1000 \
    > "$WORK/configure.log" 2>&1 || { tail -n 30 "$WORK/configure.log"; exit 4; }
say "compiling (progress: one dot per 50 files)"
make -j"$(nproc)" 2>&1 | awk '/^g?(cc|\+\+|g\+\+)/ || /-c / {n++; if (n%50==0) {printf "."; fflush()}} /rror/ {print}' 
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "error: Bochs build failed"; exit 5; }
echo
# The dfsg source has no ROM images; install warns about them (we use
# Debian 12's bochsbios/vgabios instead).
make install >"$WORK/install.log" 2>&1 || true
[ -x "$BOCHS_PREFIX/bin/bochs" ] || { tail -n 20 "$WORK/install.log"; say "error: Bochs install failed"; exit 6; }
touch "$STAMP"
say "Bochs 3.0 installed at $BOCHS_PREFIX"
