#include "worker/engine.h"

#include <algorithm>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/backend_registry.h"
#include "worker/attention/kv_store_sizing.h"

namespace lserve {

namespace {

constexpr int64_t kHostKvCacheBytes = int64_t{4} << 30;
// Device memory left beside the KV pools for what ops allocate on first use (GEMM and
// attention workspaces, staging arenas, activations of longer steps).
constexpr int64_t kDeviceReserveBytes = int64_t{512} << 20;

}  // namespace

Engine::Engine(ModelWeights weights, std::unique_ptr<Backend> backend)
    : weights_(std::move(weights)), backend_(std::move(backend)) {}

absl::StatusOr<int64_t> Engine::KvCacheBytes(const EngineOptions& options) const {
  if (options.max_kv_cache_bytes > 0) return options.max_kv_cache_bytes;
  if (options.max_kv_cache_bytes < 0) {
    return absl::InvalidArgumentError("max_kv_cache_bytes must be >= 0 (0: sized by the engine)");
  }
  const absl::StatusOr<BackendMemoryInfo> memory = backend_->QueryMemory();
  if (!memory.ok()) {
    if (memory.status().code() == absl::StatusCode::kUnimplemented) return kHostKvCacheBytes;
    return memory.status();
  }
  const int64_t bytes = KvBytesFromFreeMemory(memory->free_bytes, options.gpu_memory_utilization,
                                              kDeviceReserveBytes);
  LOG(Info) << backend_->name() << ": " << (memory->free_bytes >> 20) << " MiB of "
            << (memory->total_bytes >> 20) << " MiB free after weights and activations; KV cache "
            << "may take " << (bytes >> 20) << " MiB (gpu_memory_utilization "
            << options.gpu_memory_utilization << ")";
  return bytes;
}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ModelWeights weights,
                                                       const EngineOptions& options) {
  BackendOptions backend_options;
  backend_options.num_threads = options.num_threads;
  backend_options.device = options.device;
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   CreateBackend(options.backend, backend_options));
  return Create(std::move(weights), options, std::move(backend));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ModelWeights weights,
                                                       const EngineOptions& options,
                                                       std::unique_ptr<Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("Engine::Create: no backend");
  RETURN_IF_ERROR(ValidateModelConfig(weights.config));
  // Sliding-window attention (Mistral v0.1, some Qwen2) equals full attention up to the
  // window, so serving contexts up to the window is exact; longer ones are refused.
  if (weights.config.sliding_window > 0 &&
      weights.config.sliding_window < weights.config.max_position_embeddings) {
    LOG(Warning) << "model uses a " << weights.config.sliding_window
                 << "-token sliding window: serving contexts up to that length";
    weights.config.max_position_embeddings = weights.config.sliding_window;
  }
  const ModelConfig& config = weights.config;
  RETURN_IF_ERROR(ValidateSparseAttentionConfig(options.attention));
  if (options.max_sequences <= 0) return absl::InvalidArgumentError("max_sequences must be > 0");
  if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("gpu_memory_utilization must be in (0, 1], got ",
                                                   options.gpu_memory_utilization));
  }
  RETURN_IF_ERROR(backend->CheckEngineSupport());
  RETURN_IF_ERROR(
      backend->CheckAttentionHeads(config.num_heads, config.num_kv_heads, config.head_dim));
  const KvGeometry geometry{config.num_layers, config.num_kv_heads, config.head_dim,
                            config.max_position_embeddings};
  std::unique_ptr<Engine> engine(new Engine(std::move(weights), std::move(backend)));
  engine->replay_decode_steps_ = options.replay_decode_steps;
  // Weights and the activations of a full chunk first: the KV pools get what is left.
  ASSIGN_OR_RETURN(engine->device_weights_,
                   UploadEngineWeights(engine->weights_, engine->backend_.get()));
  RETURN_IF_ERROR(engine->EnsureActivations(std::max<int64_t>(options.max_chunk_tokens, 1),
                                            options.max_sequences));
  KvMemoryBudget capacity;
  capacity.dense_pages = options.num_dense_pages;
  capacity.streaming_pages = options.num_streaming_pages;
  capacity.max_sequences = options.max_sequences;
  ASSIGN_OR_RETURN(capacity.max_bytes, engine->KvCacheBytes(options));
  capacity.max_chunk_tokens = options.max_chunk_tokens;
  capacity.dtype = engine->backend_->compute_dtype();
  ASSIGN_OR_RETURN(KvStoreConfig kv_config,
                   KvStoreConfigFor(options.attention, geometry, capacity));
  const int64_t kv_bytes = kv_config.num_dense_pages * DensePageBytes(kv_config) +
                           kv_config.num_streaming_pages * StreamingPageBytes(kv_config);
  LOG(Info) << "KV cache: " << kv_config.num_dense_pages << " dense and "
            << kv_config.num_streaming_pages << " streaming pages of " << kv_config.page_size
            << " tokens, " << (kv_bytes >> 20) << " MiB in " << engine->backend_->name()
            << " memory";
  ASSIGN_OR_RETURN(engine->kv_, KvStore::Create(std::move(kv_config), engine->backend_->memory(),
                                                options.prefix_caching));
  ASSIGN_OR_RETURN(engine->attention_, HybridAttention::Create(engine->kv_.get(), options.attention,
                                                               engine->weights_.config.num_heads,
                                                               engine->backend_.get()));
  return engine;
}

absl::Status Engine::AddSequence(SeqId seq) { return kv_->AddSequence(seq); }

absl::Status Engine::FreeSequence(SeqId seq) {
  attention_->Forget(seq);
  decode_steps_.erase(seq);
  return kv_->FreeSequence(seq);
}

absl::Status Engine::ValidateBatch(const std::vector<StepInput>& batch) const {
  const ModelConfig& config = weights_.config;
  std::unordered_set<SeqId> seen;
  for (const StepInput& input : batch) {
    if (!seen.insert(input.seq).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", input.seq, " appears twice in one step"));
    }
    ASSIGN_OR_RETURN(const int64_t length, kv_->tables().Length(input.seq));
    if (input.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", input.seq, ": no tokens"));
    }
    if (input.phase == StepPhase::kDecode && input.tokens.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", input.seq, ": a decode step takes exactly one token"));
    }
    for (int32_t token : input.tokens) {
      if (token < 0 || token >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", input.seq, ": token id ", token,
                                                       " is outside the vocabulary [0, ",
                                                       config.vocab_size, ")"));
      }
    }
    const int64_t new_length = length + static_cast<int64_t>(input.tokens.size());
    if (new_length > config.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat("sequence ", input.seq, ": ", new_length,
                                                " tokens exceed the context length ",
                                                config.max_position_embeddings));
    }
    if (input.sample && input.sampling.top_logprobs > 20) {
      return absl::InvalidArgumentError("at most 20 top logprobs per token");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PageCounts> Engine::PagesNeeded(const std::vector<StepInput>& batch) const {
  PageCounts total;
  for (const StepInput& input : batch) {
    ASSIGN_OR_RETURN(const PageCounts needed,
                     kv_->tables().PagesNeeded(input.seq, static_cast<int64_t>(input.tokens.size()),
                                               input.phase == StepPhase::kDecode));
    total.dense += needed.dense;
    total.streaming += needed.streaming;
  }
  return total;
}

absl::StatusOr<std::vector<StepOutput>> Engine::Step(const std::vector<StepInput>& batch,
                                                     const StepStarted& started) {
  RETURN_IF_ERROR(ValidateBatch(batch));
  ASSIGN_OR_RETURN(const PageCounts needed, PagesNeeded(batch));
  const PageCounts available = kv_->tables().Available();
  if (needed.dense > available.dense || needed.streaming > available.streaming) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache is full: the step needs ", needed.dense, " dense and ", needed.streaming,
        " streaming pages, ", available.dense, " and ", available.streaming, " are available"));
  }
  for (const StepInput& input : batch) {
    RETURN_IF_ERROR(kv_->tables().Extend(input.seq, static_cast<int64_t>(input.tokens.size()),
                                         input.phase == StepPhase::kDecode));
  }
  std::shared_ptr<QueueMarks> marks;
  const bool has_prefill = std::any_of(batch.begin(), batch.end(), [](const StepInput& input) {
    return input.phase == StepPhase::kPrefill;
  });
  if (started && has_prefill) {
    absl::StatusOr<std::unique_ptr<QueueMarks>> made = backend_->NewQueueMarks(config().num_layers);
    if (made.ok()) {
      marks = *std::move(made);
      started(marks);
    } else {
      LOG(Warning) << "no queue marks for this step: " << made.status();
    }
  }
  std::vector<StepOutput> outputs;
  if (absl::Status forward = Forward(batch, &outputs, marks.get()); !forward.ok()) {
    if (marks != nullptr) marks->Abandon(forward);
    return forward;
  }
  for (const StepInput& input : batch) {
    RETURN_IF_ERROR(kv_->tables().Commit(input.seq, static_cast<int64_t>(input.tokens.size())));
    if (input.phase == StepPhase::kDecode) ++decode_steps_[input.seq];
  }
  return outputs;
}

absl::StatusOr<int64_t> Engine::AttachCachedPrefix(SeqId seq, std::span<const int32_t> prompt) {
  PrefixCache* cache = kv_->prefix_cache();
  if (cache == nullptr) return 0;
  const PrefixMatch match = cache->Match(prompt);
  RETURN_IF_ERROR(cache->Attach(seq, match));
  return match.tokens;
}

void Engine::CachePrefix(SeqId seq, std::span<const int32_t> tokens) {
  if (kv_->prefix_cache() != nullptr) kv_->prefix_cache()->Insert(seq, tokens);
}

absl::StatusOr<KvSnapshot> Engine::SwapOut(SeqId seq) {
  ASSIGN_OR_RETURN(KvSnapshot snapshot, kv_->ExportSequence(seq));
  RETURN_IF_ERROR(kv_->FreeSequence(seq));  // selections and the decode count stay
  return snapshot;
}

void Engine::ForgetSwapped(SeqId seq) {
  attention_->Forget(seq);
  decode_steps_.erase(seq);
}

absl::Status Engine::SwapIn(SeqId seq, const KvSnapshot& snapshot) {
  return kv_->ImportSequence(seq, snapshot);
}

absl::StatusOr<KvPlacement> Engine::ImportPages(SeqId seq, const KvSnapshot& manifest) {
  return kv_->ImportPages(seq, manifest);
}

}  // namespace lserve
