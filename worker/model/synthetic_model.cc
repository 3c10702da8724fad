#include "worker/model/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"

namespace lserve {
namespace {

// Random streams restart every kChunk elements from a key derived from (seed, tensor name,
// chunk index), so chunks can be generated in any order on any number of threads.
constexpr int64_t kChunk = int64_t{1} << 16;
// Generation switches to a thread pool above this many parameters.
constexpr int64_t kParallelThreshold = int64_t{1} << 22;

// Norm weights are 1 + U(-1, 1) / 16 and biases U(-1, 1) / 8; power-of-two scales keep
// the arithmetic exact so no compiler contraction can change a bit.
constexpr double kNormNoise = 1.0 / 16;
constexpr double kBiasScale = 1.0 / 8;
// Embedding std 0.5: with tied embeddings the logits then have std 0.5 * sqrt(hidden).
constexpr double kEmbedStd = 0.5;
// The untied lm_head gets std 2 / sqrt(hidden), so logits have std about 2.
constexpr double kLmHeadGain = 2.0;

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t HashName(std::string_view name) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (char c : name) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

enum class Kind { kLinear, kEmbedding, kLmHead, kNorm, kBias };

Kind KindOf(std::string_view name) {
  if (name == "model.embed_tokens.weight") return Kind::kEmbedding;
  if (name == "lm_head.weight") return Kind::kLmHead;
  if (name.ends_with(".bias")) return Kind::kBias;
  if (name.ends_with("norm.weight")) return Kind::kNorm;
  return Kind::kLinear;
}

struct Job {
  uint64_t key;  // per tensor
  Kind kind;
  double scale;
  float* out;
  int64_t begin;
  int64_t end;
};

void Generate(const Job& job) {
  uint64_t state = Mix64(job.key ^ Mix64(static_cast<uint64_t>(job.begin / kChunk) + 1));
  for (int64_t i = job.begin; i < job.end; ++i) {
    state += 0x9e3779b97f4a7c15ull;  // splitmix64
    const uint64_t bits = Mix64(state) >> 40;
    // Uniform on (-1, 1) in steps of 2^-23; exact in double.
    const double u = (static_cast<double>(bits) + 0.5) * 0x1p-23 - 1.0;
    double value;
    switch (job.kind) {
      case Kind::kNorm:
        value = 1.0 + u * kNormNoise;
        break;
      case Kind::kBias:
        value = u * kBiasScale;
        break;
      default:
        value = u * job.scale;
        break;
    }
    job.out[i] = static_cast<float>(value);
  }
}

}  // namespace

ModelConfig TinySyntheticConfig() {
  ModelConfig config;
  config.model_type = "llama";
  config.hidden_size = 128;
  config.intermediate_size = 384;
  config.num_layers = 4;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 32;
  config.vocab_size = 512;
  config.max_position_embeddings = 4096;
  config.rms_norm_eps = 1e-5f;
  config.rope_theta = 10000.0f;
  config.tie_word_embeddings = false;  // an untied head keeps logits at std ~2: varied output
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = "float32";
  return config;
}

ModelConfig Synthetic100MConfig() {
  ModelConfig config = TinySyntheticConfig();
  config.hidden_size = 768;
  config.intermediate_size = 2048;
  config.num_layers = 12;
  config.num_heads = 12;
  config.num_kv_heads = 4;
  config.head_dim = 64;
  config.vocab_size = 32000;
  config.max_position_embeddings = 8192;
  config.tie_word_embeddings = false;
  return config;
}

ModelConfig Llama3_8BConfig() {
  ModelConfig config;
  config.model_type = "llama";
  config.hidden_size = 4096;
  config.intermediate_size = 14336;
  config.num_layers = 32;
  config.num_heads = 32;
  config.num_kv_heads = 8;
  config.head_dim = 128;
  config.vocab_size = 128256;
  config.max_position_embeddings = 131072;
  config.rms_norm_eps = 1e-5f;
  config.rope_theta = 500000.0f;
  config.rope_scaling.type = RopeScalingType::kLlama3;
  config.rope_scaling.factor = 8.0f;
  config.rope_scaling.low_freq_factor = 1.0f;
  config.rope_scaling.high_freq_factor = 4.0f;
  config.rope_scaling.original_max_position_embeddings = 8192;
  config.tie_word_embeddings = false;
  config.bos_token_id = 128000;
  config.eos_token_ids = {128001, 128008, 128009};
  config.dtype = "bfloat16";
  return config;
}

absl::StatusOr<ModelWeights> MakeSyntheticWeights(const ModelConfig& config, uint64_t seed) {
  RETURN_IF_ERROR(ValidateModelConfig(config));
  ModelWeights weights;
  weights.config = config;
  const std::vector<NamedWeight> tensors = ListModelTensors(config, weights);
  int64_t total = 0;
  for (const NamedWeight& tensor : tensors) {
    int64_t elements = 1;
    for (int64_t dim : tensor.shape) elements *= dim;
    total += elements;
  }
  std::shared_ptr<float[]> buffer(new (std::nothrow) float[total]);
  if (buffer == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", total, " floats for a synthetic model"));
  }
  std::vector<Job> jobs;
  int64_t offset = 0;
  for (const NamedWeight& named : tensors) {
    WeightTensor& tensor = *named.tensor;
    tensor.shape = named.shape;
    tensor.data = buffer.get() + offset;
    tensor.owner = buffer;
    const int64_t elements = tensor.NumElements();
    const Kind kind = KindOf(named.name);
    // Linear weights: variance 1 / fan_in; fan_in is the last (input) dimension.
    double scale = std::sqrt(3.0 / static_cast<double>(named.shape.back()));
    if (kind == Kind::kEmbedding) scale = std::sqrt(3.0) * kEmbedStd;
    if (kind == Kind::kLmHead) scale *= kLmHeadGain;
    const uint64_t key = Mix64(seed ^ Mix64(HashName(named.name)));
    for (int64_t begin = 0; begin < elements; begin += kChunk) {
      jobs.push_back(
          {key, kind, scale, buffer.get() + offset, begin, std::min(elements, begin + kChunk)});
    }
    offset += elements;
  }
  auto run = [&jobs](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) Generate(jobs[i]);
  };
  if (total > kParallelThreshold) {
    ThreadPool pool;
    pool.ParallelFor(static_cast<int64_t>(jobs.size()), 16, run);
  } else {
    run(0, static_cast<int64_t>(jobs.size()));
  }
  if (config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  weights.storage = buffer;
  return weights;
}

absl::Status WriteSyntheticModel(const ModelConfig& config, uint64_t seed, DType dtype,
                                 const std::filesystem::path& folder) {
  ModelConfig written = config;
  written.dtype = dtype == DType::kF32 ? "float32" : dtype == DType::kF16 ? "float16" : "bfloat16";
  ASSIGN_OR_RETURN(ModelWeights weights, MakeSyntheticWeights(written, seed));
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", folder.string(), ": ", error.message()));
  }
  const std::filesystem::path config_path = folder / "config.json";
  {
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << ModelConfigToJson(written);
    out.close();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", config_path.string()));
  }
  std::vector<TensorToWrite> to_write;
  for (const NamedWeight& named : ListModelTensors(written, weights)) {
    const WeightTensor& tensor = *named.tensor;
    to_write.push_back(
        {named.name, tensor.shape, std::span<const float>(tensor.data, tensor.NumElements())});
  }
  return WriteSafetensors(folder / "model.safetensors", to_write, dtype);
}

}  // namespace lserve
