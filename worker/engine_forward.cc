// The forward pass of one engine step, op by op through the Backend seam.
#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine.h"

namespace lserve {
namespace {

absl::Status Grow(Buffer& buffer, MemorySpace* memory, size_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  ASSIGN_OR_RETURN(buffer, Buffer::Allocate(memory, bytes));
  return absl::OkStatus();
}

}  // namespace

absl::Status Engine::EnsureActivations(int64_t rows, int64_t out_rows) {
  const ModelConfig& c = weights_.config;
  MemorySpace* memory = backend_->memory();
  const size_t element = DTypeSize(backend_->compute_dtype());
  if (rows > rows_capacity_) {
    const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
    const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
    RETURN_IF_ERROR(Grow(x_, memory, rows * c.hidden_size * element));
    RETURN_IF_ERROR(Grow(xn_, memory, rows * c.hidden_size * element));
    RETURN_IF_ERROR(Grow(qkv_, memory, rows * (q_dim + 2 * kv_dim) * element));
    RETURN_IF_ERROR(Grow(attn_, memory, rows * q_dim * element));
    RETURN_IF_ERROR(Grow(proj_, memory, rows * c.hidden_size * element));
    RETURN_IF_ERROR(Grow(gate_up_, memory, rows * 2 * c.intermediate_size * element));
    RETURN_IF_ERROR(Grow(act_, memory, rows * c.intermediate_size * element));
    rows_capacity_ = rows;
  }
  if (out_rows > out_rows_capacity_) {
    RETURN_IF_ERROR(Grow(hidden_out_, memory, out_rows * c.hidden_size * element));
    RETURN_IF_ERROR(Grow(logits_, memory, out_rows * int64_t{c.vocab_size} * sizeof(float)));
    RETURN_IF_ERROR(Grow(samples_, memory, out_rows * kSampleWords * sizeof(int32_t)));
    out_rows_capacity_ = out_rows;
  }
  return absl::OkStatus();
}

absl::Status Engine::Forward(const std::vector<StepInput>& batch, std::vector<StepOutput>* outputs,
                             QueueMarks* marks) {
  const ModelConfig& c = weights_.config;
  Backend* be = backend_.get();
  const DType dt = be->compute_dtype();
  const int64_t hidden = c.hidden_size;
  const int d = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * d;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * d;
  const int64_t inter = c.intermediate_size;
  const int vocab = c.vocab_size;
  const int64_t element = DTypeSize(dt);

  // Rows, positions and the attention plan.
  std::vector<int32_t> ids, positions, out_row_ids;
  std::vector<AttentionSequence> sequences;
  std::vector<int64_t> first_out_row;
  std::vector<SamplingRow> sampling_rows;
  std::vector<int64_t> sample_row_of;  // per input: index into sampling_rows or -1
  for (const StepInput& input : batch) {
    const int64_t start = *kv_->tables().Length(input.seq);
    const int64_t n = static_cast<int64_t>(input.tokens.size());
    const bool decode = input.phase == StepPhase::kDecode;
    sequences.push_back({input.seq, static_cast<int64_t>(ids.size()), n, start, decode,
                         decode ? decode_steps_[input.seq] : 0});
    first_out_row.push_back(static_cast<int64_t>(out_row_ids.size()));
    const int64_t row0 = static_cast<int64_t>(ids.size());
    if (input.logits == LogitRows::kAll) {
      for (int64_t i = 0; i < n; ++i) out_row_ids.push_back(static_cast<int32_t>(row0 + i));
    } else if (input.logits == LogitRows::kLast || input.sample) {
      out_row_ids.push_back(static_cast<int32_t>(row0 + n - 1));
    }
    sample_row_of.push_back(input.sample ? static_cast<int64_t>(sampling_rows.size()) : -1);
    if (input.sample) sampling_rows.push_back(input.sampling);
    for (int64_t i = 0; i < n; ++i) {
      ids.push_back(input.tokens[i]);
      positions.push_back(static_cast<int32_t>(start + i));
    }
  }
  const int64_t rows = static_cast<int64_t>(ids.size());
  const int64_t out_rows = static_cast<int64_t>(out_row_ids.size());
  RETURN_IF_ERROR(EnsureActivations(rows, std::max<int64_t>(out_rows, 1)));
  const bool decode_only = std::all_of(batch.begin(), batch.end(), [](const StepInput& input) {
    return input.phase == StepPhase::kDecode;
  });
  if (decode_only && replay_decode_steps_) {
    be->BeginReplayableStep();
  } else {
    be->BeginStep();
  }
  RETURN_IF_ERROR(plan_.Build(*kv_, sequences, attention_->config(), be));
  ASSIGN_OR_RETURN(const int32_t* ids_device, StageVector(be, ids));
  ASSIGN_OR_RETURN(const int32_t* positions_device, StageVector(be, positions));

  const EngineWeights& w = device_weights_;
  auto gemm = [&](const void* x, const BackendTensor& weight, const BackendTensor& bias, void* y,
                  int64_t n, int64_t k) {
    return be->Gemm({x, weight.data, bias.data, y, rows, n, k, dt, dt});
  };
  RETURN_IF_ERROR(
      be->Embedding({w.embed_tokens.data, ids_device, x_.data(), rows, hidden, vocab, dt}));
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const EngineLayerWeights& lw = w.layers[layer];
    // Layer 0 normalizes the embeddings; later layers fold the previous MLP output into
    // the residual stream first.
    RmsNormParams norm{proj_.data(),   lw.input_norm.data, xn_.data(), rows, hidden, 0, 0,
                       c.rms_norm_eps, x_.data(),          dt};
    if (layer == 0) {
      norm.x = x_.data();
      norm.residual = nullptr;
    }
    RETURN_IF_ERROR(be->RmsNorm(norm));
    // q, k and v of a row: one joined GEMM gives rows of q_dim + 2 kv_dim values; separate
    // GEMMs give three packed matrices one after another.
    char* q = static_cast<char*>(qkv_.data());
    char *k, *v;
    int64_t q_stride, kv_stride;
    if (lw.joined()) {
      RETURN_IF_ERROR(gemm(xn_.data(), lw.qkv_proj, lw.qkv_bias, q, q_dim + 2 * kv_dim, hidden));
      k = q + q_dim * element;
      v = k + kv_dim * element;
      q_stride = kv_stride = q_dim + 2 * kv_dim;
    } else {
      k = q + rows * q_dim * element;
      v = k + rows * kv_dim * element;
      q_stride = q_dim;
      kv_stride = kv_dim;
      RETURN_IF_ERROR(gemm(xn_.data(), lw.q_proj, lw.q_bias, q, q_dim, hidden));
      RETURN_IF_ERROR(gemm(xn_.data(), lw.k_proj, lw.k_bias, k, kv_dim, hidden));
      RETURN_IF_ERROR(gemm(xn_.data(), lw.v_proj, lw.v_bias, v, kv_dim, hidden));
    }
    // RoPE of q and k, then k and v into the pools with the page statistics: one op.
    const float* inv_freq = w.inv_freq.as<float>();
    RETURN_IF_ERROR(attention_->RopeAppend(
        layer, plan_, {q, positions_device, inv_freq, rows, c.num_heads, d, q_stride, dt},
        {k, positions_device, inv_freq, rows, c.num_kv_heads, d, kv_stride, dt}, v, kv_stride));
    if (marks != nullptr) RETURN_IF_ERROR(marks->Place(layer));
    RETURN_IF_ERROR(attention_->Run(layer, plan_, q, attn_.data(), q_stride));
    RETURN_IF_ERROR(gemm(attn_.data(), lw.o_proj, lw.o_bias, proj_.data(), hidden, q_dim));
    RETURN_IF_ERROR(be->RmsNorm({proj_.data(), lw.post_attention_norm.data, xn_.data(), rows,
                                 hidden, 0, 0, c.rms_norm_eps, x_.data(), dt}));
    // gate and up likewise: joined rows of 2 * inter values, or two packed matrices.
    char* gate_up = static_cast<char*>(gate_up_.data());
    if (lw.joined()) {
      RETURN_IF_ERROR(be->GemmSiluMul(
          {xn_.data(), lw.gate_up_proj.data, act_.data(), gate_up, rows, inter, hidden, dt}));
    } else {
      char* up = gate_up + rows * inter * element;
      RETURN_IF_ERROR(gemm(xn_.data(), lw.gate_proj, {}, gate_up, inter, hidden));
      RETURN_IF_ERROR(gemm(xn_.data(), lw.up_proj, {}, up, inter, hidden));
      RETURN_IF_ERROR(
          be->SiluMul({gate_up, up, act_.data(), rows, inter, inter, inter, inter, dt}));
    }
    RETURN_IF_ERROR(gemm(act_.data(), lw.down_proj, {}, proj_.data(), hidden, inter));
  }
  outputs->clear();
  for (const StepInput& input : batch) {
    StepOutput out;
    out.seq = input.seq;
    outputs->push_back(std::move(out));
  }
  if (out_rows == 0) return be->Synchronize();

  // Final norm, then logits only for the rows asked for, through one lm_head product so
  // the vocabulary matrix is streamed once per step.
  RETURN_IF_ERROR(be->RmsNorm({proj_.data(), w.final_norm.data, xn_.data(), rows, hidden, 0, 0,
                               c.rms_norm_eps, x_.data(), dt}));
  ASSIGN_OR_RETURN(const int32_t* out_rows_device, StageVector(be, out_row_ids));
  RETURN_IF_ERROR(
      be->Embedding({xn_.data(), out_rows_device, hidden_out_.data(), out_rows, hidden, rows, dt}));
  RETURN_IF_ERROR(be->Gemm({hidden_out_.data(), w.lm_head.data, nullptr, logits_.data(), out_rows,
                            vocab, hidden, dt, DType::kF32}));

  // Sampling reads the last out row of each sampled input.
  std::vector<int32_t> sample_logit_rows;
  for (size_t b = 0; b < batch.size(); ++b) {
    if (sample_row_of[b] < 0) continue;
    const int64_t n_out =
        batch[b].logits == LogitRows::kAll ? static_cast<int64_t>(batch[b].tokens.size()) : 1;
    sample_logit_rows.push_back(static_cast<int32_t>(first_out_row[b] + n_out - 1));
  }
  const int num_samples = static_cast<int>(sampling_rows.size());
  const int64_t n = num_samples;
  // What Sample writes into samples_, 4-byte words: the n tokens, the n logprobs, then 20
  // top ids and 20 top logprobs per row; one copy brings them to the host.
  std::vector<int32_t> sampled(n * kSampleWords);
  MemorySpace* memory = be->memory();
  if (num_samples > 0) {
    // Gather the sampled rows' logits to the front of a contiguous block when they are
    // not already the out rows in order.
    const float* logits = logits_.as<float>();
    bool contiguous = true;
    for (int i = 0; i < num_samples; ++i) contiguous = contiguous && sample_logit_rows[i] == i;
    Buffer gathered;
    if (!contiguous) {
      ASSIGN_OR_RETURN(gathered, Buffer::Allocate(memory, num_samples * int64_t{vocab} * 4));
      ASSIGN_OR_RETURN(const int32_t* rows_device, StageVector(be, sample_logit_rows));
      // Logits are float32: gather them as float32 rows.
      RETURN_IF_ERROR(be->Embedding(
          {logits, rows_device, gathered.data(), num_samples, vocab, out_rows, DType::kF32}));
      logits = gathered.as<float>();
    }
    ASSIGN_OR_RETURN(const SamplingRow* rows_device, StageVector(be, sampling_rows));
    int32_t* words = samples_.as<int32_t>();
    RETURN_IF_ERROR(be->Sample({logits, num_samples, vocab, rows_device, words,
                                reinterpret_cast<float*>(words + n), 20, words + 2 * n,
                                reinterpret_cast<float*>(words + 22 * n)}));
    RETURN_IF_ERROR(
        be->SynchronizeAndRead(sampled.data(), words, sampled.size() * sizeof(int32_t)));
  } else {
    RETURN_IF_ERROR(be->Synchronize());
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    StepOutput& out = (*outputs)[b];
    const StepInput& input = batch[b];
    if (input.logits != LogitRows::kNone) {
      out.num_rows = input.logits == LogitRows::kAll ? static_cast<int>(input.tokens.size()) : 1;
      const int64_t first = first_out_row[b];
      out.logits.resize(int64_t{out.num_rows} * vocab);
      RETURN_IF_ERROR(memory->CopyToHost(out.logits.data(), logits_.as<float>() + first * vocab,
                                         out.logits.size() * sizeof(float)));
    }
    if (sample_row_of[b] < 0) continue;
    const int64_t s = sample_row_of[b];
    out.sampled = true;
    out.token = sampled[s];
    out.logprob = std::bit_cast<float>(sampled[n + s]);
    for (int i = 0; i < std::min(input.sampling.top_logprobs, 20); ++i) {
      out.top_logprobs.emplace_back(sampled[2 * n + s * 20 + i],
                                    std::bit_cast<float>(sampled[22 * n + s * 20 + i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace lserve
