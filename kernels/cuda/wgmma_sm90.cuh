// Internal to kernels/cuda: the Hopper (sm_90a) pieces of the prefill and page-scoring
// kernels as PTX wrappers: mbarriers (init, arrive, parity wait, cp.async completion
// arrivals), bulk copies completing on mbarriers, named barriers, the async-proxy fence, register
// reallocation (setmaxnreg) and warpgroup MMA (wgmma) with shared-memory matrix descriptors for
// 128-byte-swizzled bf16 tiles.
//
// Tile layout every operand here uses: a bf16 tile of `rows` rows and D columns is stored
// as D / 64 column blocks of rows x 128 bytes, block after block; inside a block, row r's
// 16-byte chunk c sits at r * 128 + ((c ^ (r % 8)) << 4), the hardware's 128-byte swizzle,
// so tiles start 1024-byte aligned. Read K-major (A = Q, B = K: the reduction runs along
// the columns) or MN-major (B = V: the reduction runs along the rows).
#ifndef LSERVE_KERNELS_CUDA_WGMMA_SM90_CUH_
#define LSERVE_KERNELS_CUDA_WGMMA_SM90_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LSERVE_SM90A_DEVICE 1
#endif

namespace lserve::cuda::internal::sm90 {

__device__ __forceinline__ uint32_t Smem(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

#ifdef LSERVE_SM90A_DEVICE

__device__ __forceinline__ void BarrierInit(uint64_t* barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(Smem(barrier)), "r"(count));
}
// Makes initialized barriers visible to the async proxy and the other threads (follow
// with __syncthreads).
__device__ __forceinline__ void BarrierInitFence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void BarrierArrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(Smem(barrier)) : "memory");
}
// Waits until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void BarrierWait(uint64_t* barrier, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(Smem(barrier)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Arrives at a named barrier without waiting (the waiting side uses NamedBarrier).
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Orders this thread's generic-proxy shared-memory accesses before later async-proxy
// (wgmma) ones.
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Arrives once and adds `bytes` to the transaction bytes the barrier's phase waits for.
__device__ __forceinline__ void BarrierArriveExpectTx(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(Smem(barrier)),
               "r"(bytes)
               : "memory");
}
// Bulk copy (TMA, no tensor map) of `bytes`, a multiple of 16, between 16-byte aligned
// addresses, global to shared; its bytes complete transactions on `barrier`.
__device__ __forceinline__ void BulkCopyToShared(uint32_t shared_address, const void* global,
                                                 uint32_t bytes, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(shared_address),
      "l"(global), "r"(bytes), "r"(Smem(barrier))
      : "memory");
}
// Tensor copy (TMA) of one box of a 3-D tensor map (a __grid_constant__ parameter) at
// coordinates (c0, c1, c2) into shared memory; its bytes complete transactions on
// `barrier`.
__device__ __forceinline__ void TensorCopy3d(uint32_t shared_address, const void* tensor_map,
                                             int c0, int c1, int c2, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(shared_address),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(Smem(barrier))
      : "memory");
}
// Arrives once this thread's earlier cp.async copies have landed (counted in the
// barrier's initial count).
__device__ __forceinline__ void BarrierArriveOnCpAsync(uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(Smem(barrier))
               : "memory");
}
template <int kRegisters>
__device__ __forceinline__ void RegistersDecrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void RegistersIncrease() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// WgmmaWait that the assembler cannot hoist above the computation of `a` and `b`: the
// wait is predicated on a test of them that always passes (a + b is a sum of softmax
// weights, never -1). Without it ptxas moves the wait up and the register work meant to
// overlap the in-flight wgmma runs after it.
template <int kPending>
__device__ __forceinline__ void WgmmaWaitAfter(float a, float b) {
  asm volatile(
      "{\n.reg .pred p;\n.reg .f32 t;\nadd.f32 t, %0, %1;\nsetp.neu.f32 p, t, 0fBF800000;\n"
      "@p wgmma.wait_group.sync.aligned %2;\n}\n" ::"f"(a),
      "f"(b), "n"(kPending)
      : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across wgmma boundaries.
template <int kCount>
__device__ __forceinline__ void FenceRegisters(float (&r)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

#endif  // LSERVE_SM90A_DEVICE

// Shared-memory matrix descriptor of a 128-byte-swizzled tile (layout above): start
// address, leading and stride byte offsets in 16-byte units, swizzle mode 1 (128 B).
// K-major: stride = 1024 (8 rows of 128 B), leading unused (1). MN-major: leading =
// bytes of one 64-column block, stride = 1024.
__device__ __forceinline__ uint64_t MatrixDescriptor(uint32_t smem_address, uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  return static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

#ifdef LSERVE_SM90A_DEVICE

// The float32 accumulator operands of a wgmma: their places in the PTX text and their
// constraints, for 32 (n64) and 64 (n128) registers.
#define LSERVE_WGMMA_D32                                                                           \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25," \
  "%26,%27,%28,%29,%30,%31"
#define LSERVE_WGMMA_D64                                                                       \
  LSERVE_WGMMA_D32                                                                             \
  ",%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%" \
  "54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define LSERVE_WGMMA_ACC8(d, i)                                                               \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define LSERVE_WGMMA_ACC32(d)                                                 \
  LSERVE_WGMMA_ACC8(d, 0), LSERVE_WGMMA_ACC8(d, 8), LSERVE_WGMMA_ACC8(d, 16), \
      LSERVE_WGMMA_ACC8(d, 24)
#define LSERVE_WGMMA_ACC64(d)                                                \
  LSERVE_WGMMA_ACC32(d), LSERVE_WGMMA_ACC8(d, 32), LSERVE_WGMMA_ACC8(d, 40), \
      LSERVE_WGMMA_ACC8(d, 48), LSERVE_WGMMA_ACC8(d, 56)

// d (64 x N, float32) = A B + (accumulate ? d : 0); A and B from shared memory, both
// K-major. Per warp w, d[4j + e] is row 16w + lane / 4 + 8 (e / 2), column
// 8j + 2 (lane % 4) + e % 2.
__device__ __forceinline__ void WgmmaSS64(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" LSERVE_WGMMA_D32
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : LSERVE_WGMMA_ACC32(d)
      : "l"(a), "l"(b), "r"(accumulate));
}
__device__ __forceinline__ void WgmmaSS128(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" LSERVE_WGMMA_D64
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : LSERVE_WGMMA_ACC64(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d (64 x N) += A B; A (64 x 16 bf16) from registers in the mma.sync m16n8k16 A fragment
// order per warp, B from shared memory MN-major.
__device__ __forceinline__ void WgmmaRS64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" LSERVE_WGMMA_D32
      "}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : LSERVE_WGMMA_ACC32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
__device__ __forceinline__ void WgmmaRS128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" LSERVE_WGMMA_D64
      "}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : LSERVE_WGMMA_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

#undef LSERVE_WGMMA_ACC64
#undef LSERVE_WGMMA_ACC32
#undef LSERVE_WGMMA_ACC8
#undef LSERVE_WGMMA_D64
#undef LSERVE_WGMMA_D32

#endif  // LSERVE_SM90A_DEVICE

}  // namespace lserve::cuda::internal::sm90

#endif  // LSERVE_KERNELS_CUDA_WGMMA_SM90_CUH_
