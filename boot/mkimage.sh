#!/usr/bin/env bash
# Build boot images from the kernel ELF64 (boot/linker.ld layout).
#   mkimage.sh elf32 <kernel.elf64> <out.elf32>
#       ELF32 copy for QEMU's multiboot loader (`-kernel`), which refuses
#       ELF64; lossless because the image is linked below 4 GiB.
#   mkimage.sh iso <kernel.elf64> <out.iso> "<cmdline>" [module-file[=args]]...
#   mkimage.sh iso-linux <bzImage> <out.iso> "<cmdline>" [initrd]
#       GRUB ISO that boots a Linux kernel natively (reference runs).
#       GRUB rescue ISO (BIOS) for Bochs, QEMU -cdrom and bare metal:
#       serial console, timeout 0, kernel command line and boot modules.
set -euo pipefail
cmd="${1:?usage: mkimage.sh elf32|iso ...}"; shift
case "$cmd" in
elf32)
    objcopy -I elf64-x86-64 -O elf32-i386 "$1" "$2"
    ;;
iso)
    kernel="$1"; out="$2"; cmdline="${3:-}"; shift 3 || shift $#
    command -v grub-mkrescue >/dev/null || { echo "mkimage: grub-mkrescue missing (make deps)" >&2; exit 2; }
    tree="$(mktemp -d)"; trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree/boot/grub"
    cp "$kernel" "$tree/boot/ftvisor.elf"
    {
        echo 'set timeout=0'
        echo 'set default=0'
        echo 'serial --unit=0 --speed=115200'
        echo 'terminal_input serial console'
        echo 'terminal_output serial'
        echo 'menuentry "ftvisor" {'
        echo "    multiboot /boot/ftvisor.elf $cmdline"
        i=0
        for m in "$@"; do
            file="${m%%=*}"; args=""
            [ "$file" != "$m" ] && args="${m#*=}"
            cp "$file" "$tree/boot/module$i"
            echo "    module /boot/module$i $args"
            i=$((i + 1))
        done
        echo '    boot'
        echo '}'
    } > "$tree/boot/grub/grub.cfg"
    grub-mkrescue -o "$out" "$tree" >/dev/null 2>&1 || {
        echo "mkimage: grub-mkrescue failed" >&2; grub-mkrescue -o "$out" "$tree"; exit 3; }
    ;;
iso-linux)
    kernel="$1"; out="$2"; cmdline="${3:-}"; initrd="${4:-}"
    initrd="${initrd%%=*}"
    command -v grub-mkrescue >/dev/null || { echo "mkimage: grub-mkrescue missing (make deps)" >&2; exit 2; }
    tree="$(mktemp -d)"; trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree/boot/grub"
    cp "$kernel" "$tree/boot/bzImage"
    {
        echo 'set timeout=0'
        echo 'set default=0'
        echo 'serial --unit=0 --speed=115200'
        echo 'terminal_input serial console'
        echo 'terminal_output serial'
        echo 'menuentry "linux" {'
        echo "    linux /boot/bzImage $cmdline"
        if [ -n "$initrd" ]; then
            cp "$initrd" "$tree/boot/initrd"
            echo '    initrd /boot/initrd'
        fi
        echo '}'
    } > "$tree/boot/grub/grub.cfg"
    grub-mkrescue -o "$out" "$tree" >/dev/null 2>&1 || {
        echo "mkimage: grub-mkrescue failed" >&2; grub-mkrescue -o "$out" "$tree"; exit 3; }
    ;;
*) echo "mkimage: unknown command $cmd" >&2; exit 2 ;;
esac
