#!/usr/bin/env bash
# Build the test guest: <outdir>/testguest.elf64 (for the hypervisor / GRUB)
# and <outdir>/testguest.elf32 (QEMU `-kernel`).
#   build.sh [outdir]      (default /work/main/build; honours CARGO_TARGET_DIR)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/build}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"
cargo build --release --target x86_64-unknown-none
target_dir="${CARGO_TARGET_DIR:-$here/target}"
cp "$target_dir/x86_64-unknown-none/release/testguest" "$out/testguest.elf64"
"$root/boot/mkimage.sh" elf32 "$out/testguest.elf64" "$out/testguest.elf32"
echo "testguest: $out/testguest.elf64 $out/testguest.elf32"
