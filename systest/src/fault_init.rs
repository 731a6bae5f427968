//! Tiny static ELF programs that stand in for a broken `/sbin/init` in fault-injection tests: one
//! that hangs forever (only a watchdog gets the machine back) and one that exits at once (PID 1
//! exiting panics the kernel, and `panic=5` restarts it). Hand-assembled, a few dozen bytes of
//! code each, so no cross toolchain is needed to build them.

use cairn_board::Arch;

/// What the fake init does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Blocks forever in a system call.
    Hang,
    /// Exits with status 1.
    Exit,
}

const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;

fn code(arch: Arch, fault: Fault) -> Vec<u8> {
    let words = |w: &[u32]| w.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    match (arch, fault) {
        // loop: mov eax, 34 (pause); syscall; jmp loop
        (Arch::X86_64, Fault::Hang) => vec![0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7],
        // mov eax, 60 (exit); mov edi, 1; syscall
        (Arch::X86_64, Fault::Exit) => vec![0xb8, 60, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0x0f, 0x05],
        // loop: x0..x3 = 0; x8 = 73 (ppoll: no fds, no timeout); svc 0; b loop
        (Arch::Aarch64, Fault::Hang) => words(&[
            0xd280_0000,
            0xd280_0001,
            0xd280_0002,
            0xd280_0003,
            0xd280_0928,
            0xd400_0001,
            0x17ff_fffa,
        ]),
        // x0 = 1; x8 = 93 (exit); svc 0
        (Arch::Aarch64, Fault::Exit) => words(&[0xd280_0020, 0xd280_0ba8, 0xd400_0001]),
    }
}

/// The ELF file: header, one PT_LOAD program header mapping the whole file, then the code.
pub fn elf(arch: Arch, fault: Fault) -> Vec<u8> {
    let code = code(arch, fault);
    let size = (EHDR + PHDR + code.len()) as u64;
    let machine: u16 = match arch {
        Arch::X86_64 => 62,
        Arch::Aarch64 => 183,
    };
    let mut f = Vec::with_capacity(size as usize);
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + (EHDR + PHDR) as u64).to_le_bytes()); // entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [EHDR as u16, PHDR as u16, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R + X
    f.extend_from_slice(&0u64.to_le_bytes()); // offset
    f.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    f.extend_from_slice(&BASE.to_le_bytes()); // paddr
    f.extend_from_slice(&size.to_le_bytes()); // filesz
    f.extend_from_slice(&size.to_le_bytes()); // memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    f.extend_from_slice(&code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own architecture can run its program: the exit one must exit 1, the hang
    /// one must still be running after a moment.
    #[test]
    fn the_host_runs_its_own_fault_programs() {
        use std::os::unix::fs::PermissionsExt;
        let arch = match std::env::consts::ARCH {
            "x86_64" => Arch::X86_64,
            "aarch64" => Arch::Aarch64,
            _ => return,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, fault| {
            let p = dir.path().join(name);
            std::fs::write(&p, elf(arch, fault)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let status = std::process::Command::new(write("exit", Fault::Exit))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
        let mut hang = std::process::Command::new(write("hang", Fault::Hang))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            hang.try_wait().unwrap().is_none(),
            "the hang program exited"
        );
        hang.kill().unwrap();
        hang.wait().unwrap();
    }
}
