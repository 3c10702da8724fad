// Two KV stores driven in lockstep, as an engine step drives one: a float32 host store on
// the CPU backend (the oracle) and a bf16 device store on the CUDA backend. Both receive
// the same bf16-rounded K/V rows and queries, so they hold the same values and allocate the
// same pages; tests compare what the two backends compute from them.
#ifndef LSERVE_TESTS_KERNELS_CUDA_PAGED_KV_TWIN_H_
#define LSERVE_TESTS_KERNELS_CUDA_PAGED_KV_TWIN_H_

#include <map>
#include <memory>
#include <random>
#include <vector>

#include "common/memory_space.h"
#include "kernels/backend_registry.h"
#include "kvstore/kv_store.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "worker/attention/attention_plan.h"
#include "worker/attention/hybrid_attention.h"
#include "worker/attention/kv_writer.h"

namespace lserve::cuda::testing {

struct TwinSide {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<KvStore> store;
  std::unique_ptr<HybridAttention> attention;
  AttentionPlan plan;
};

// One sequence's rows in a step.
struct TwinChunk {
  SeqId seq;
  int64_t n;
  bool decode;
  int64_t decode_step = 0;
};

// A one-layer store for sequences of `lengths` tokens: dense pages for all of them plus
// slack, logical pages of 16, sink 64, decode window 256, chunks up to 2048. The caller
// sets the head layout, the streaming pages and the prefill window; AttentionConfigFor
// (worker/attention/kv_writer.h) gives the matching attention config.
KvStoreConfig TwinStoreConfig(int num_kv_heads, int head_dim, int page_size,
                              const std::vector<int64_t>& lengths);

class KvTwin {
 public:
  // Returns null (after a test failure) when either side cannot be built.
  static std::unique_ptr<KvTwin> Create(KvStoreConfig config, SparseAttentionConfig attention,
                                        int num_q_heads, uint32_t seed);

  // Runs one step: extends every chunk's sequence, appends random rows in both stores and,
  // when `attend`, runs the layer's attention of a random query per row on both sides.
  // Outputs come back as floats: cpu_out exactly, gpu_out from bf16.
  absl::Status Step(const std::vector<TwinChunk>& chunks, bool attend, std::vector<float>* cpu_out,
                    std::vector<float>* gpu_out);

  // How the device side's K rows reach its store: as given, or rotated by RoPE (inv_freq
  // in device memory) first, through Rope + Rope + Append or the fused RopeAppend, from
  // rows laid out as the engine lays them out on a device (q, k, v of a token in one row).
  // With RoPE the device store no longer matches the host one, so Step must not attend;
  // GpuRotatedQueries gives the step's queries after RoPE.
  enum class GpuRope { kNone, kSeparate, kFused };
  void set_gpu_rope(GpuRope mode, const float* inv_freq) {
    gpu_rope_ = mode;
    inv_freq_ = inv_freq;
  }

  // The keys written for (seq, kv head), in position order, as floats.
  const std::vector<float>& Keys(SeqId seq, int kv_head) { return keys_[{seq, kv_head}]; }
  const KvStoreConfig& config() const { return config_; }
  TwinSide& cpu() { return cpu_; }
  TwinSide& gpu() { return gpu_; }
  int num_q_heads() const { return num_q_heads_; }
  // The step's last queries (bf16-rounded floats) and their device copy.
  const std::vector<float>& queries() const { return queries_; }
  const void* gpu_queries() const { return q_device_.data(); }

  // A copy of the device store's dense pool layer as floats.
  absl::StatusOr<std::vector<float>> GpuDensePool(int layer);
  // The same for either pool.
  absl::StatusOr<std::vector<float>> GpuPool(int layer, bool streaming);
  // After a RoPE step: its q rows, rotated, packed.
  absl::StatusOr<std::vector<uint16_t>> GpuRotatedQueries();

 private:
  KvTwin(KvStoreConfig config, int num_q_heads, uint32_t seed)
      : config_(std::move(config)), num_q_heads_(num_q_heads), rng_(seed) {}
  std::vector<uint16_t> RandomRows(int64_t rows, int64_t width, std::vector<float>* as_float);

  KvStoreConfig config_;
  int num_q_heads_;
  std::mt19937 rng_;
  TwinSide cpu_;
  TwinSide gpu_;
  std::map<std::pair<SeqId, int>, std::vector<float>> keys_;
  std::vector<float> queries_;
  Buffer q_device_;
  Buffer positions_device_;
  Buffer joined_rows_;  // RoPE steps: the rows as the engine lays them out
  int64_t joined_rows_count_ = 0;
  GpuRope gpu_rope_ = GpuRope::kNone;
  const float* inv_freq_ = nullptr;
};

}  // namespace lserve::cuda::testing

#endif  // LSERVE_TESTS_KERNELS_CUDA_PAGED_KV_TWIN_H_
