/* Multiboot1 header and 32-bit -> 64-bit trampoline. See lib.rs. */
.set MB_MAGIC, 0x1BADB002
.set MB_FLAGS, 0x00000003          /* page-align modules, memory info */

.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)

.section .boot.text, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    mov $boot_stack_top, %esp
    mov %eax, %edi                 /* multiboot magic -> kmain arg 0 */
    mov %ebx, %esi                 /* multiboot info  -> kmain arg 1 */

    /* Long mode available? CPUID.80000001h:EDX.LM[bit 29] */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc no_long_mode

    /* zero the page tables (6 pages) */
    mov $boot_pml4, %ebx
    mov %edi, %ebp                 /* keep magic */
    mov %ebx, %edi
    xor %eax, %eax
    mov $(6 * 4096 / 4), %ecx
    rep stosl
    mov %ebp, %edi

    /* PML4[0] -> PDPT */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    /* PDPT[i] -> PD i, i = 0..3 */
    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b
    /* 2048 PDEs of 2 MiB each: present | writable | page size */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax                  /* high dword: (i * 2 MiB) >> 32 */
    mov %eax, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax             /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx          /* IA32_EFER */
    rdmsr
    or $(1 << 8), %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax           /* PG | PE */
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

no_long_mode:
    mov $no_lm_msg, %ebx
3:  movb (%ebx), %al
    test %al, %al
    jz 4f
    mov $0x3F8, %dx
    outb %al, %dx
    inc %ebx
    jmp 3b
4:  cli
    hlt
    jmp 4b

.code64
long_mode_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    movabs $boot_stack_top, %rsp
    xor %ebp, %ebp
    call kmain
5:  cli
    hlt
    jmp 5b

.section .rodata.boot, "a"
no_lm_msg:
    .asciz "ftvisor: this CPU has no long mode (x86-64); cannot boot\r\n"
.align 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF       /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF       /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

.section .bss.boot, "aw", @nobits
.align 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
.align 16
boot_stack: .skip 65536
.global boot_stack_top
boot_stack_top:
