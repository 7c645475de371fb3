// AMX's tile state, shared by kernels.cpp (bf16 attention) and gemm.cpp (the int8 product). Include
// only where __AMX_TILE__ is defined; cbuild hashes this file with the sources that include it.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <immintrin.h>

namespace amx {

struct TileConfig {  // LDTILECFG's 64 bytes, palette 1
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows of 64 bytes: the whole register file, as both kernels use it. The
// configuration is thread state: each OpenMP thread loads it, and releases the tiles at the end.
inline void configure_tiles() {
  alignas(64) TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Linux gives a process AMX's tile state only when asked (oneDNN asks too, for itself); once per
// process, and false where the kernel refuses (the callers then fall back).
inline bool permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ok;
}

}  // namespace amx
