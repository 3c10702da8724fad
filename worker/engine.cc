#include "worker/engine.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/rope.h"
#include "worker/attention/head_classifier.h"

namespace lserve {
namespace {

cpu::RopeSpec RopeSpecFor(const ModelConfig& config) {
  cpu::RopeSpec spec;
  spec.head_dim = config.head_dim;
  spec.theta = config.rope_theta;
  spec.factor = config.rope_scaling.factor;
  spec.low_freq_factor = config.rope_scaling.low_freq_factor;
  spec.high_freq_factor = config.rope_scaling.high_freq_factor;
  spec.original_max_position_embeddings = config.rope_scaling.original_max_position_embeddings;
  switch (config.rope_scaling.type) {
    case RopeScalingType::kNone:
      spec.kind = cpu::RopeKind::kDefault;
      break;
    case RopeScalingType::kLinear:
      spec.kind = cpu::RopeKind::kLinear;
      break;
    case RopeScalingType::kLlama3:
      spec.kind = cpu::RopeKind::kLlama3;
      break;
  }
  return spec;
}

const float* OrNull(const WeightTensor& t) { return t.empty() ? nullptr : t.data; }

}  // namespace

Engine::Engine(ModelWeights weights, std::unique_ptr<PagedKvCache> kv,
               const SparseAttentionConfig& attention, int num_threads)
    : weights_(std::move(weights)),
      kv_(std::move(kv)),
      attention_(attention),
      pool_(std::make_unique<ThreadPool>(num_threads)),
      attention_runner_(kv_.get(), attention, weights_.config.num_heads),
      inv_freq_(cpu::RopeInverseFrequencies(RopeSpecFor(weights_.config))) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(ModelWeights weights,
                                                       const EngineOptions& options) {
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
  const SparseAttentionConfig& attention = options.attention;
  RETURN_IF_ERROR(ValidateSparseAttentionConfig(attention));
  if (options.max_sequences <= 0) return absl::InvalidArgumentError("max_sequences must be > 0");
  if (options.num_threads < 0 || options.num_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_threads must be in [0, 1024] (0: one per core), got ", options.num_threads));
  }
  KvCacheConfig kv_config;
  kv_config.num_layers = config.num_layers;
  kv_config.num_kv_heads = config.num_kv_heads;
  kv_config.head_dim = config.head_dim;
  kv_config.page_size = attention.page_size;
  kv_config.logical_page_size = attention.logical_page_size;
  kv_config.sink = attention.sink;
  kv_config.prefill_local = attention.prefill_local;
  kv_config.decode_local = attention.decode_local;
  kv_config.max_chunk_tokens = options.max_chunk_tokens;
  ASSIGN_OR_RETURN(kv_config.layout,
                   HeadLayoutFor(attention, config.num_layers, config.num_kv_heads));
  const int64_t p = attention.page_size;
  const int64_t pages_per_context = (config.max_position_embeddings + p - 1) / p;
  // A streaming sequence holds its sink pages plus a ring sized for the prefill window.
  const bool has_streaming = kv_config.layout.TotalStreamingHeads() > 0;
  const int64_t streaming_per_sequence = std::min(
      pages_per_context, (attention.sink + p - 1) / p +
                             (attention.prefill_local + options.max_chunk_tokens + p - 1) / p + 1);
  kv_config.num_streaming_pages =
      options.num_streaming_pages > 0
          ? options.num_streaming_pages
          : (has_streaming ? streaming_per_sequence * options.max_sequences : 0);
  // Bytes of one page in each pool over all layers: K and V, plus kmax/kmin for dense heads.
  const int64_t head_page_bytes = int64_t{4} * p * config.head_dim;
  const int64_t stats_bytes = int64_t{4} * 2 * (p / attention.logical_page_size) * config.head_dim;
  int64_t dense_page_bytes = 0, streaming_page_bytes = 0;
  for (const LayerHeadLayout& layer : kv_config.layout.layers) {
    dense_page_bytes += layer.num_dense * (2 * head_page_bytes + stats_bytes);
    streaming_page_bytes += layer.num_streaming * 2 * head_page_bytes;
  }
  if (options.num_dense_pages > 0) {
    kv_config.num_dense_pages = options.num_dense_pages;
  } else {
    const int64_t left =
        options.max_kv_cache_bytes - kv_config.num_streaming_pages * streaming_page_bytes;
    kv_config.num_dense_pages =
        std::min(pages_per_context * options.max_sequences,
                 dense_page_bytes > 0 ? left / dense_page_bytes : pages_per_context);
    if (kv_config.num_dense_pages <= 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("max_kv_cache_bytes (", options.max_kv_cache_bytes,
                       ") leaves no room for dense KV pages after the streaming pool"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> kv, PagedKvCache::Create(std::move(kv_config)));
  return std::unique_ptr<Engine>(
      new Engine(std::move(weights), std::move(kv), attention, options.num_threads));
}

absl::Status Engine::AddSequence(SeqId seq) { return kv_->AddSequence(seq); }

absl::Status Engine::FreeSequence(SeqId seq) {
  attention_runner_.Forget(seq);
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
    ASSIGN_OR_RETURN(const int64_t length, kv_->Length(input.seq));
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
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StepOutput>> Engine::Step(const std::vector<StepInput>& batch) {
  RETURN_IF_ERROR(ValidateBatch(batch));
  const ModelConfig& config = weights_.config;
  std::vector<int64_t> offsets, start_pos;
  int64_t total = 0;
  for (const StepInput& input : batch) {
    offsets.push_back(total);
    start_pos.push_back(*kv_->Length(input.seq));
    total += static_cast<int64_t>(input.tokens.size());
  }
  for (const StepInput& input : batch) {
    RETURN_IF_ERROR(kv_->Extend(input.seq, static_cast<int64_t>(input.tokens.size()),
                                input.phase == StepPhase::kDecode));
  }
  const int64_t hidden = config.hidden_size;
  const int d = config.head_dim;
  const int64_t q_dim = int64_t{config.num_heads} * d;
  const int64_t kv_dim = int64_t{config.num_kv_heads} * d;
  const int64_t inter = config.intermediate_size;
  x_.resize(total * hidden);
  xn_.resize(total * hidden);
  q_.resize(total * q_dim);
  k_.resize(total * kv_dim);
  v_.resize(total * kv_dim);
  attn_.resize(total * q_dim);
  proj_.resize(total * hidden);
  gate_.resize(total * inter);
  up_.resize(total * inter);
  positions_.resize(total);
  for (size_t b = 0; b < batch.size(); ++b) {
    for (size_t i = 0; i < batch[b].tokens.size(); ++i) {
      const int64_t row = offsets[b] + static_cast<int64_t>(i);
      positions_[row] = static_cast<int32_t>(start_pos[b] + static_cast<int64_t>(i));
      const float* embedding = weights_.embed_tokens.data + int64_t{batch[b].tokens[i]} * hidden;
      std::copy(embedding, embedding + hidden, x_.data() + row * hidden);
    }
  }
  std::vector<AttentionSequence> sequences;
  for (size_t b = 0; b < batch.size(); ++b) {
    const bool decode = batch[b].phase == StepPhase::kDecode;
    sequences.push_back({batch[b].seq, offsets[b], static_cast<int64_t>(batch[b].tokens.size()),
                         start_pos[b], decode, decode ? decode_steps_[batch[b].seq] : 0});
  }
  ThreadPool* pool = pool_.get();
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    cpu::RmsNorm(x_.data(), total, hidden, w.input_norm.data, config.rms_norm_eps, xn_.data());
    cpu::Linear(xn_.data(), total, hidden, w.q_proj.data, q_dim, OrNull(w.q_bias), q_.data(), pool);
    cpu::Linear(xn_.data(), total, hidden, w.k_proj.data, kv_dim, OrNull(w.k_bias), k_.data(),
                pool);
    cpu::Linear(xn_.data(), total, hidden, w.v_proj.data, kv_dim, OrNull(w.v_bias), v_.data(),
                pool);
    cpu::ApplyRope(q_.data(), total, config.num_heads, d, positions_.data(), inv_freq_.data());
    cpu::ApplyRope(k_.data(), total, config.num_kv_heads, d, positions_.data(), inv_freq_.data());
    for (size_t b = 0; b < batch.size(); ++b) {
      kv_->Write(layer, batch[b].seq, start_pos[b], static_cast<int64_t>(batch[b].tokens.size()),
                 k_.data() + offsets[b] * kv_dim, v_.data() + offsets[b] * kv_dim, kv_dim);
    }
    attention_runner_.Run(layer, sequences, q_.data(), attn_.data(), pool);
    cpu::Linear(attn_.data(), total, q_dim, w.o_proj.data, hidden, OrNull(w.o_bias), proj_.data(),
                pool);
    cpu::AddInPlace(x_.data(), proj_.data(), total * hidden);
    cpu::RmsNorm(x_.data(), total, hidden, w.post_attention_norm.data, config.rms_norm_eps,
                 xn_.data());
    cpu::Linear(xn_.data(), total, hidden, w.gate_proj.data, inter, nullptr, gate_.data(), pool);
    cpu::Linear(xn_.data(), total, hidden, w.up_proj.data, inter, nullptr, up_.data(), pool);
    cpu::SiluMul(gate_.data(), up_.data(), total * inter, gate_.data());
    cpu::Linear(gate_.data(), total, inter, w.down_proj.data, hidden, nullptr, proj_.data(), pool);
    cpu::AddInPlace(x_.data(), proj_.data(), total * hidden);
  }
  for (const StepInput& input : batch) {
    RETURN_IF_ERROR(kv_->Commit(input.seq, static_cast<int64_t>(input.tokens.size())));
    if (input.phase == StepPhase::kDecode) ++decode_steps_[input.seq];
  }
  // Logits only for the rows asked for (the last token of each sequence by default), all
  // through one lm_head product so the vocabulary matrix is streamed once per step.
  std::vector<int64_t> first_out_row;
  int64_t out_rows = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t n = static_cast<int64_t>(batch[b].tokens.size());
    const int64_t first_row = batch[b].all_logits ? offsets[b] : offsets[b] + n - 1;
    const int64_t rows = batch[b].all_logits ? n : 1;
    cpu::RmsNorm(x_.data() + first_row * hidden, rows, hidden, weights_.final_norm.data,
                 config.rms_norm_eps, xn_.data() + out_rows * hidden);
    first_out_row.push_back(out_rows);
    out_rows += rows;
  }
  const int64_t vocab = config.vocab_size;
  logits_.resize(out_rows * vocab);
  cpu::Linear(xn_.data(), out_rows, hidden, weights_.lm_head.data, vocab, nullptr, logits_.data(),
              pool);
  std::vector<StepOutput> outputs;
  for (size_t b = 0; b < batch.size(); ++b) {
    StepOutput out;
    out.seq = batch[b].seq;
    out.num_rows = batch[b].all_logits ? static_cast<int>(batch[b].tokens.size()) : 1;
    const float* src = logits_.data() + first_out_row[b] * vocab;
    out.logits.assign(src, src + out.num_rows * vocab);
    outputs.push_back(std::move(out));
  }
  return outputs;
}

}  // namespace lserve
