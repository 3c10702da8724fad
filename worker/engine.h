// The model runtime: one Step runs a batch that mixes prefill chunks and single decode
// tokens of different sequences over the paged KV store, on a Backend. It samples in the
// backend and returns tokens; logits come back only when asked for.
#ifndef LSERVE_WORKER_ENGINE_H_
#define LSERVE_WORKER_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvstore/kv_store.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/attention_plan.h"
#include "worker/attention/hybrid_attention.h"
#include "worker/engine_weights.h"
#include "worker/model/model_weights.h"

namespace lserve {

struct EngineOptions {
  std::string backend = "cpu";
  int num_threads = 0;  // cpu: 0 one per core
  int device = 0;       // cuda: device ordinal
  // Hybrid sparse attention; SparseAttentionConfig::Dense() turns every sparsity off.
  SparseAttentionConfig attention;
  // KV pages per pool; 0 sizes each pool for max_sequences full contexts, within
  // max_kv_cache_bytes for both pools together.
  int64_t num_dense_pages = 0;
  int64_t num_streaming_pages = 0;
  int max_sequences = 8;
  // 0: 4 GiB on the CPU backend; on a device, gpu_memory_utilization of the memory still
  // free once the weights and activations are in place.
  int64_t max_kv_cache_bytes = 0;
  double gpu_memory_utilization = 0.9;  // in (0, 1]
  int64_t max_chunk_tokens = 2048;      // longest prefill chunk the streaming ring must hold
  bool prefix_caching = false;
  // Steps of decode tokens only run as one replayable unit (Backend::BeginReplayableStep):
  // on a GPU, a CUDA graph per recurring step shape instead of a launch per op.
  bool replay_decode_steps = true;
};

enum class StepPhase { kPrefill, kDecode };
// Logit rows copied back to the host.
enum class LogitRows { kNone, kLast, kAll };

struct StepInput {
  SeqId seq = 0;
  std::vector<int32_t> tokens;
  StepPhase phase = StepPhase::kPrefill;
  LogitRows logits = LogitRows::kNone;
  bool sample = false;  // sample the token that follows the last row
  SamplingRow sampling;
};

struct StepOutput {
  SeqId seq = 0;
  bool sampled = false;
  int32_t token = -1;
  float logprob = 0.0f;                                 // when sampling.top_logprobs >= 0
  std::vector<std::pair<int32_t, float>> top_logprobs;  // best first
  int num_rows = 0;                                     // logit rows returned
  std::vector<float> logits;                            // num_rows x vocab
};

// Called inside Engine::Step once the batch's pages are placed and before its work is
// queued: the step places mark l once layer l's KV appends are queued, so the pages of
// layer l are final when mark l has passed (a device transport sends them meanwhile).
using StepStarted = std::function<void(std::shared_ptr<QueueMarks> marks)>;

class Engine {
 public:
  // The backend named by options.backend.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(ModelWeights weights,
                                                        const EngineOptions& options);
  // A backend made by the caller (options.backend, num_threads and device are unused).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(ModelWeights weights,
                                                        const EngineOptions& options,
                                                        std::unique_ptr<Backend> backend);
  ~Engine();

  absl::Status AddSequence(SeqId seq);
  absl::Status FreeSequence(SeqId seq);
  absl::StatusOr<int64_t> SequenceLength(SeqId seq) const { return kv_->tables().Length(seq); }

  // Runs one forward step; on error no sequence advances. RESOURCE_EXHAUSTED when the
  // step's tokens do not fit in the KV pools (checked before anything changes). With
  // `started`, a step with prefill inputs places queue marks (StepStarted).
  absl::StatusOr<std::vector<StepOutput>> Step(const std::vector<StepInput>& batch,
                                               const StepStarted& started = nullptr);
  // Pages of each pool the step's inputs would newly take (what Step checks).
  absl::StatusOr<PageCounts> PagesNeeded(const std::vector<StepInput>& batch) const;

  // Prefix caching (when enabled): shares the cached pages of the longest usable prefix of
  // `prompt` with the fresh sequence `seq` and returns how many tokens they hold.
  absl::StatusOr<int64_t> AttachCachedPrefix(SeqId seq, std::span<const int32_t> prompt);
  // Caches the full pages among the sequence's first tokens (ids from position 0).
  void CachePrefix(SeqId seq, std::span<const int32_t> tokens);

  // Swapping: the sequence's KV and decode state leave the pools and come back intact.
  absl::StatusOr<KvSnapshot> SwapOut(SeqId seq);
  absl::Status SwapIn(SeqId seq, const KvSnapshot& snapshot);
  // A sequence on fresh pages that a device transport fills (KvStore::ImportPages).
  absl::StatusOr<KvPlacement> ImportPages(SeqId seq, const KvSnapshot& manifest);
  // Drops the decode state a swapped-out sequence left behind.
  void ForgetSwapped(SeqId seq);

  const ModelConfig& config() const { return weights_.config; }
  const KvStore& kv_store() const { return *kv_; }
  KvStore& kv_store() { return *kv_; }
  const SparseAttentionConfig& attention_config() const { return attention_->config(); }
  Backend& backend() { return *backend_; }
  // Attention work since creation: (query block, KV span) tiles visited out of listed.
  const AttentionStats& attention_stats() const { return attention_->stats(); }
  // The attention layer, e.g. to export or import its page selections.
  HybridAttention& attention() { return *attention_; }
  int64_t selection_recomputations() const { return attention_->selection_recomputations(); }
  int64_t selection_reuses() const { return attention_->selection_reuses(); }

 private:
  Engine(ModelWeights weights, std::unique_ptr<Backend> backend);
  // The byte budget of the KV pools (see EngineOptions::max_kv_cache_bytes).
  absl::StatusOr<int64_t> KvCacheBytes(const EngineOptions& options) const;
  absl::Status ValidateBatch(const std::vector<StepInput>& batch) const;
  absl::Status Forward(const std::vector<StepInput>& batch, std::vector<StepOutput>* outputs,
                       QueueMarks* marks);
  absl::Status EnsureActivations(int64_t rows, int64_t out_rows);

  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvStore> kv_;
  std::unique_ptr<HybridAttention> attention_;
  EngineWeights device_weights_;
  std::unordered_map<SeqId, int64_t> decode_steps_;
  bool replay_decode_steps_ = true;
  AttentionPlan plan_;
  // Activations in backend memory, grown as needed.
  int64_t rows_capacity_ = 0;
  int64_t out_rows_capacity_ = 0;
  Buffer x_, xn_, qkv_, attn_, proj_, gate_up_, act_, hidden_out_, logits_;
  // Per sampled row: token, logprob, 20 top ids and 20 top logprobs (4-byte words).
  static constexpr int64_t kSampleWords = 42;
  Buffer samples_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ENGINE_H_
