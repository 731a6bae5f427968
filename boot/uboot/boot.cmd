# Cairn A/B slot selection for U-Boot, in RAUC's documented style and with RAUC's variables.
#
# Compile: mkimage -A arm64 -T script -C none -d boot.cmd boot.scr
#
# Saved environment, written by Cairn (cairn-boot, uboot::state) and counted down here:
#   BOOT_ORDER    slots to try, first = preferred, e.g. "B A"
#   BOOT_A_LEFT   tries left for slot A, hexadecimal (setexpr writes hex, itest reads hex)
#   BOOT_B_LEFT   tries left for slot B
#   CAIRN_VERITY_A, CAIRN_VERITY_B
#                 the slot's "cairn.roothash=<hex> cairn.hashoffset=<bytes>", written with the slot;
#                 init refuses to mount a root without them
# From the board's default environment:
#   cairn_bootargs                 kernel command line without the slot (console=..., and the
#                                  reset-on-hang arguments of Cairn's images: panic=5
#                                  panic_on_oops=1 softlockup_panic=1 hung_task_panic=1 ...)
#   cairn_wdt                      optional: the board's watchdog device as `wdt list` names it;
#                                  started before the kernel (cairn_wdt_timeout_ms, default 60000)
#   kernel_addr_r, ramdisk_addr_r  load addresses; kernel_comp_addr_r and kernel_comp_size too
#                                  when vmlinuz is compressed (Debian's arm64 kernel is gzip)
#   devtype, devnum, distro_bootpart  the partition this script was loaded from (distro boot)
# Each slot's kernel and initramfs: EFI/cairn/<a|b>/vmlinuz and EFI/cairn/<a|b>/initramfs.img.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv cairn_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test -n "${cairn_slot}"; then
    # a slot is chosen: skip the rest
  elif test "x${BOOT_SLOT}" = "xA"; then
    if itest ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      echo "Cairn: booting slot A, ${BOOT_A_LEFT} tries left after this one"
      setenv cairn_slot a
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if itest ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      echo "Cairn: booting slot B, ${BOOT_B_LEFT} tries left after this one"
      setenv cairn_slot b
    fi
  fi
done

if test -z "${cairn_slot}"; then
  # Every slot in BOOT_ORDER used its tries: start over rather than stop. A slot Cairn marked
  # bad is not in BOOT_ORDER and stays out.
  echo "Cairn: no slot in BOOT_ORDER (${BOOT_ORDER}) has tries left; resetting tries to 3"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi

# Save the decremented count before booting: a kernel that hangs or panics has used its try.
saveenv

if test "x${cairn_slot}" = "xa"; then
  setenv cairn_verity "${CAIRN_VERITY_A}"
else
  setenv cairn_verity "${CAIRN_VERITY_B}"
fi
setenv bootargs "${cairn_bootargs} cairn.slot=${cairn_slot} ${cairn_verity}"

# The hardware watchdog runs from here on: the kernel keeps it fed until init opens it
# (watchdog.handle_boot_enabled, for at most watchdog.open_timeout), and init keeps it running.
# A kernel that hangs before init resets the board and has spent this slot's try.
if test -n "${cairn_wdt}"; then
  test -n "${cairn_wdt_timeout_ms}" || setenv cairn_wdt_timeout_ms 60000
  if wdt dev ${cairn_wdt}; then
    wdt start ${cairn_wdt_timeout_ms}
  else
    echo "Cairn: no watchdog ${cairn_wdt}; booting without one"
  fi
fi
if load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} EFI/cairn/${cairn_slot}/vmlinuz; then
  if load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} EFI/cairn/${cairn_slot}/initramfs.img; then
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
  fi
fi

# Only reached if the slot could not be loaded or booted; its try is already spent.
echo "Cairn: slot ${cairn_slot} did not boot; resetting"
reset
