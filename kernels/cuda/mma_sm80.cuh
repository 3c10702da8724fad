// Internal to kernels/cuda: the warp-level tensor-core pieces the attention kernels share
// (sm_80 and later): cp.async, ldmatrix, mma.sync m16n8k16 bf16 -> float32, and the XOR
// swizzle of 16-byte chunks that makes ldmatrix on row-major bf16 tiles conflict-free.
#ifndef LSERVE_KERNELS_CUDA_MMA_SM80_CUH_
#define LSERVE_KERNELS_CUDA_MMA_SM80_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace lserve::cuda::internal {

// Copies `bytes` (at most 16; the rest of the 16 are zeroed) to a shared-memory byte
// address, or to a shared-memory pointer.
__device__ __forceinline__ void CpAsync16(uint32_t shared_address, const void* global,
                                          int bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(global),
               "r"(bytes));
}
__device__ __forceinline__ void CpAsync16(void* shared, const void* global, int bytes) {
  CpAsync16(static_cast<uint32_t>(__cvta_generic_to_shared(shared)), global, bytes);
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ uint32_t SmemAddress(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t address, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t address, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// d += A B, A 16x16 (fragments a0-a3: rows g / g+8, columns 2t.. and 8+2t..), B 16x8.
__device__ __forceinline__ void MmaBf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Byte offset of (row, 16-byte chunk) in a row-major bf16 tile of kHeadDim columns.
template <int kHeadDim>
__device__ __forceinline__ uint32_t TileOffset(int row, int chunk) {
  return row * (kHeadDim * 2) + ((chunk ^ (row & 7)) << 4);
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_MMA_SM80_CUH_
