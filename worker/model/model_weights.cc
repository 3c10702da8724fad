#include "worker/model/model_weights.h"

#include <algorithm>
#include <cstdint>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"
#include "worker/model/safetensors.h"

namespace lserve {
namespace {

// Conversion work is split into pieces of this many elements so that one huge embedding
// table does not leave the other threads idle.
constexpr int64_t kConvertChunk = int64_t{1} << 22;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

struct ConvertJob {
  const TensorInfo* source;
  float* destination;
  int64_t begin;  // element range within the tensor
  int64_t end;
};

// Keeps the mapped files and the converted buffer alive behind ModelWeights::storage.
struct LoadedStorage {
  std::shared_ptr<const CheckpointReader> reader;
  std::shared_ptr<float[]> converted;
};

absl::Status RunConversions(const std::vector<ConvertJob>& jobs) {
  int64_t total = 0;
  for (const ConvertJob& job : jobs) total += job.end - job.begin;
  std::vector<absl::Status> results(jobs.size());
  auto convert = [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const ConvertJob& job = jobs[i];
      // A view of the element range, so each piece converts independently.
      TensorInfo piece = *job.source;
      const size_t element_size = DTypeSize(piece.dtype);
      piece.shape = {job.end - job.begin};
      piece.data += job.begin * element_size;
      piece.num_bytes = (job.end - job.begin) * element_size;
      results[i] = ConvertToFloat32(
          piece, std::span<float>(job.destination + job.begin, job.end - job.begin));
    }
  };
  if (total >= (int64_t{1} << 24)) {
    ThreadPool pool;
    pool.ParallelFor(static_cast<int64_t>(jobs.size()), 1, convert);
  } else {
    convert(0, static_cast<int64_t>(jobs.size()));
  }
  for (const absl::Status& status : results) RETURN_IF_ERROR(status);
  return absl::OkStatus();
}

}  // namespace

int64_t WeightTensor::NumElements() const {
  int64_t elements = 1;
  for (int64_t dim : shape) elements *= dim;
  return elements;
}

std::vector<NamedWeight> ListModelTensors(const ModelConfig& config, ModelWeights& weights) {
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = int64_t{config.num_heads} * config.head_dim;
  const int64_t kv_width = int64_t{config.num_kv_heads} * config.head_dim;
  const int64_t intermediate = config.intermediate_size;
  std::vector<NamedWeight> list;
  list.push_back({"model.embed_tokens.weight", {config.vocab_size, hidden}, &weights.embed_tokens});
  weights.layers.resize(std::max(config.num_layers, 0));
  for (int i = 0; i < config.num_layers; ++i) {
    LayerWeights& layer = weights.layers[i];
    const std::string prefix = absl::StrCat("model.layers.", i, ".");
    const std::string attn = prefix + "self_attn.";
    list.push_back({prefix + "input_layernorm.weight", {hidden}, &layer.input_norm});
    list.push_back({attn + "q_proj.weight", {q_width, hidden}, &layer.q_proj});
    list.push_back({attn + "k_proj.weight", {kv_width, hidden}, &layer.k_proj});
    list.push_back({attn + "v_proj.weight", {kv_width, hidden}, &layer.v_proj});
    list.push_back({attn + "o_proj.weight", {hidden, q_width}, &layer.o_proj});
    if (config.qkv_bias) {
      list.push_back({attn + "q_proj.bias", {q_width}, &layer.q_bias});
      list.push_back({attn + "k_proj.bias", {kv_width}, &layer.k_bias});
      list.push_back({attn + "v_proj.bias", {kv_width}, &layer.v_bias});
    }
    if (config.o_bias) list.push_back({attn + "o_proj.bias", {hidden}, &layer.o_bias});
    list.push_back(
        {prefix + "post_attention_layernorm.weight", {hidden}, &layer.post_attention_norm});
    list.push_back({prefix + "mlp.gate_proj.weight", {intermediate, hidden}, &layer.gate_proj});
    list.push_back({prefix + "mlp.up_proj.weight", {intermediate, hidden}, &layer.up_proj});
    list.push_back({prefix + "mlp.down_proj.weight", {hidden, intermediate}, &layer.down_proj});
  }
  list.push_back({"model.norm.weight", {hidden}, &weights.final_norm});
  if (!config.tie_word_embeddings) {
    list.push_back({"lm_head.weight", {config.vocab_size, hidden}, &weights.lm_head});
  }
  return list;
}

absl::StatusOr<ModelWeights> LoadModelWeights(const std::filesystem::path& folder) {
  const std::filesystem::path config_path = folder / "config.json";
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(config_path));
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> opened, CheckpointReader::Open(folder));
  auto storage = std::make_shared<LoadedStorage>();
  storage->reader = std::move(opened);
  const CheckpointReader& reader = *storage->reader;

  ModelWeights weights;
  weights.config = config;
  const std::vector<NamedWeight> wanted = ListModelTensors(config, weights);
  std::vector<const TensorInfo*> found(wanted.size());
  int64_t converted_elements = 0;
  for (size_t i = 0; i < wanted.size(); ++i) {
    const NamedWeight& want = wanted[i];
    absl::StatusOr<const TensorInfo*> info = reader.Get(want.name);
    if (!info.ok()) {
      if (want.name == "lm_head.weight") {
        return absl::NotFoundError(
            absl::StrCat(info.status().message(), "; ", config_path.string(),
                         " sets tie_word_embeddings false, so it is needed"));
      }
      return info.status();
    }
    if ((*info)->shape != want.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", want.name, "' in ", (*info)->file, " has shape ", ShapeString((*info)->shape),
          ", expected ", ShapeString(want.shape), " from ", config_path.string()));
    }
    found[i] = *info;
    const bool aligned = reinterpret_cast<uintptr_t>((*info)->data) % alignof(float) == 0;
    if ((*info)->dtype != DType::kF32 || !aligned) converted_elements += (*info)->NumElements();
  }

  std::shared_ptr<float[]> converted;
  if (converted_elements > 0) {
    converted.reset(new (std::nothrow) float[converted_elements]);
    if (converted == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", converted_elements, " floats for the weights of ", folder.string()));
    }
  }
  storage->converted = converted;
  const std::shared_ptr<const void> reader_owner(storage, storage->reader.get());
  std::vector<ConvertJob> jobs;
  int64_t offset = 0;
  for (size_t i = 0; i < wanted.size(); ++i) {
    const TensorInfo* info = found[i];
    WeightTensor& tensor = *wanted[i].tensor;
    tensor.shape = info->shape;
    const bool aligned = reinterpret_cast<uintptr_t>(info->data) % alignof(float) == 0;
    if (info->dtype == DType::kF32 && aligned) {
      tensor.data = reinterpret_cast<const float*>(info->data);
      tensor.owner = reader_owner;
      continue;
    }
    float* destination = converted.get() + offset;
    const int64_t elements = info->NumElements();
    for (int64_t begin = 0; begin < elements; begin += kConvertChunk) {
      jobs.push_back({info, destination, begin, std::min(elements, begin + kConvertChunk)});
    }
    tensor.data = destination;
    tensor.owner = converted;
    offset += elements;
  }
  RETURN_IF_ERROR(RunConversions(jobs));
  if (config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  weights.storage = std::move(storage);
  return weights;
}

}  // namespace lserve
