// The CPU model runtime: one Step runs a batch that mixes prefill chunks and single decode
// tokens of different sequences over the paged KV cache.
#ifndef LSERVE_WORKER_ENGINE_H_
#define LSERVE_WORKER_ENGINE_H_

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "kvstore/paged_kv_cache.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/hybrid_attention.h"
#include "worker/model/model_weights.h"

namespace lserve {

struct EngineOptions {
  int num_threads = 0;  // 0: one per core
  // Hybrid sparse attention; SparseAttentionConfig::Dense() turns every sparsity off.
  SparseAttentionConfig attention;
  // KV pages per pool; 0 sizes each pool for max_sequences full contexts, within
  // max_kv_cache_bytes for both pools together.
  int64_t num_dense_pages = 0;
  int64_t num_streaming_pages = 0;
  int max_sequences = 8;
  int64_t max_kv_cache_bytes = int64_t{4} << 30;
  int64_t max_chunk_tokens = 2048;  // longest prefill chunk the streaming ring must hold
};

enum class StepPhase { kPrefill, kDecode };

struct StepInput {
  SeqId seq = 0;
  std::vector<int32_t> tokens;
  StepPhase phase = StepPhase::kPrefill;
  bool all_logits = false;  // logits for every token instead of only the last
};

struct StepOutput {
  SeqId seq = 0;
  int num_rows = 0;
  std::vector<float> logits;  // num_rows x vocab_size
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(ModelWeights weights,
                                                        const EngineOptions& options);

  absl::Status AddSequence(SeqId seq);
  absl::Status FreeSequence(SeqId seq);
  absl::StatusOr<int64_t> SequenceLength(SeqId seq) const { return kv_->Length(seq); }

  // Runs one forward step; on error no sequence advances.
  absl::StatusOr<std::vector<StepOutput>> Step(const std::vector<StepInput>& batch);

  const ModelConfig& config() const { return weights_.config; }
  const PagedKvCache& kv_cache() const { return *kv_; }
  const SparseAttentionConfig& attention_config() const { return attention_; }
  // Attention work since creation: (query block, KV span) tiles visited out of listed.
  const cpu::AttentionStats& attention_stats() const { return attention_runner_.stats(); }
  int64_t selection_recomputations() const { return attention_runner_.selection_recomputations(); }
  ThreadPool* pool() { return pool_.get(); }

 private:
  Engine(ModelWeights weights, std::unique_ptr<PagedKvCache> kv,
         const SparseAttentionConfig& attention, int num_threads);
  absl::Status ValidateBatch(const std::vector<StepInput>& batch) const;

  ModelWeights weights_;
  std::unique_ptr<PagedKvCache> kv_;
  SparseAttentionConfig attention_;
  std::unique_ptr<ThreadPool> pool_;
  HybridAttention attention_runner_;
  std::unordered_map<SeqId, int64_t> decode_steps_;
  std::vector<float> inv_freq_;
  // Activations, reused across steps.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, logits_;
  std::vector<int32_t> positions_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ENGINE_H_
