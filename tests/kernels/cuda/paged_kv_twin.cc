#include "tests/kernels/cuda/paged_kv_twin.h"

#include "common/status_macros.h"

namespace lserve::cuda::testing {

KvStoreConfig TwinStoreConfig(int num_kv_heads, int head_dim, int page_size,
                              const std::vector<int64_t>& lengths) {
  KvStoreConfig config;
  config.num_layers = 1;
  config.num_kv_heads = num_kv_heads;
  config.head_dim = head_dim;
  config.page_size = page_size;
  config.logical_page_size = 16;
  int64_t tokens = 0;
  for (int64_t len : lengths) tokens += len + 2 * page_size + 64;
  config.num_dense_pages = tokens / page_size + 16;
  config.sink = 64;
  config.decode_local = 256;
  config.max_chunk_tokens = 2048;
  return config;
}

namespace {

absl::Status BuildSide(TwinSide* side, std::string_view backend, KvStoreConfig config,
                       const SparseAttentionConfig& attention, int num_q_heads) {
  ASSIGN_OR_RETURN(side->backend, CreateBackend(backend, {2, 0}));
  config.dtype = side->backend->compute_dtype();
  ASSIGN_OR_RETURN(side->store, KvStore::Create(config, side->backend->memory(), false));
  ASSIGN_OR_RETURN(side->attention, HybridAttention::Create(side->store.get(), attention,
                                                            num_q_heads, side->backend.get()));
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<Buffer> Upload(MemorySpace* memory, const std::vector<T>& host) {
  ASSIGN_OR_RETURN(Buffer buffer, Buffer::Allocate(memory, host.size() * sizeof(T)));
  RETURN_IF_ERROR(memory->CopyFromHost(buffer.data(), host.data(), host.size() * sizeof(T)));
  return buffer;
}

}  // namespace

std::unique_ptr<KvTwin> KvTwin::Create(KvStoreConfig config, SparseAttentionConfig attention,
                                       int num_q_heads, uint32_t seed) {
  std::unique_ptr<KvTwin> twin(new KvTwin(config, num_q_heads, seed));
  for (auto [side, name] : {std::pair{&twin->cpu_, "cpu"}, std::pair{&twin->gpu_, "cuda"}}) {
    const absl::Status status = BuildSide(side, name, config, attention, num_q_heads);
    EXPECT_TRUE(status.ok()) << name << ": " << status;
    if (!status.ok()) return nullptr;
  }
  return twin;
}

std::vector<uint16_t> KvTwin::RandomRows(int64_t rows, int64_t width,
                                         std::vector<float>* as_float) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> bits(rows * width);
  as_float->resize(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    bits[i] = FloatToBf16(normal(rng_));
    (*as_float)[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}

absl::Status KvTwin::Step(const std::vector<TwinChunk>& chunks, bool attend,
                          std::vector<float>* cpu_out, std::vector<float>* gpu_out) {
  const int d = config_.head_dim;
  const int64_t width = int64_t{config_.num_kv_heads} * d;
  std::vector<AttentionSequence> batch;
  int64_t rows = 0;
  for (const TwinChunk& chunk : chunks) {
    int64_t start = 0;
    for (TwinSide* side : {&cpu_, &gpu_}) {
      KvPageTables& tables = side->store->tables();
      if (!tables.HasSequence(chunk.seq)) RETURN_IF_ERROR(side->store->AddSequence(chunk.seq));
      ASSIGN_OR_RETURN(start, tables.Length(chunk.seq));
      RETURN_IF_ERROR(tables.Extend(chunk.seq, chunk.n, chunk.decode));
    }
    batch.push_back({chunk.seq, rows, chunk.n, start, chunk.decode, chunk.decode_step});
    rows += chunk.n;
  }
  std::vector<float> k_float, v_float;
  const std::vector<uint16_t> k_bits = RandomRows(rows, width, &k_float);
  const std::vector<uint16_t> v_bits = RandomRows(rows, width, &v_float);
  for (const AttentionSequence& s : batch) {
    for (int h = 0; h < config_.num_kv_heads; ++h) {
      std::vector<float>& keys = keys_[{s.seq, h}];
      for (int64_t r = 0; r < s.num_queries; ++r) {
        const float* row = k_float.data() + (s.q_row + r) * width + int64_t{h} * d;
        keys.insert(keys.end(), row, row + d);
      }
    }
  }
  const int64_t q_width = int64_t{num_q_heads_} * d;
  const std::vector<uint16_t> q_bits = RandomRows(rows, q_width, &queries_);
  MemorySpace* device = gpu_.backend->memory();
  for (TwinSide* side : {&cpu_, &gpu_}) {
    side->backend->BeginStep();
    RETURN_IF_ERROR(
        side->plan.Build(*side->store, batch, side->attention->config(), side->backend.get()));
  }
  RETURN_IF_ERROR(cpu_.attention->Append(0, cpu_.plan, k_float.data(), v_float.data(), width));
  ASSIGN_OR_RETURN(Buffer k_device, Upload(device, k_bits));
  ASSIGN_OR_RETURN(Buffer v_device, Upload(device, v_bits));
  if (gpu_rope_ == GpuRope::kNone) {
    RETURN_IF_ERROR(gpu_.attention->Append(0, gpu_.plan, k_device.data(), v_device.data(), width));
  } else {
    if (attend) return absl::InvalidArgumentError("KvTwin: no attention after a RoPE append");
    std::vector<int32_t> positions;
    for (const AttentionSequence& s : batch) {
      for (int64_t r = 0; r < s.num_queries; ++r) {
        positions.push_back(static_cast<int32_t>(s.start_pos + r));
      }
    }
    ASSIGN_OR_RETURN(positions_device_, Upload(device, positions));
    // The engine's layout on a device: each row holds q, then k, then v.
    const int64_t stride = q_width + 2 * width;
    std::vector<uint16_t> joined(rows * stride);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(q_bits.begin() + r * q_width, q_width, joined.begin() + r * stride);
      std::copy_n(k_bits.begin() + r * width, width, joined.begin() + r * stride + q_width);
      std::copy_n(v_bits.begin() + r * width, width, joined.begin() + r * stride + q_width + width);
    }
    ASSIGN_OR_RETURN(joined_rows_, Upload(device, joined));
    joined_rows_count_ = rows;
    uint16_t* q = joined_rows_.as<uint16_t>();
    uint16_t* k = q + q_width;
    const uint16_t* v = k + width;
    const auto* position_data = positions_device_.as<int32_t>();
    const RopeParams q_rope{q, position_data, inv_freq_,   rows, num_q_heads_,
                            d, stride,        DType::kBF16};
    const RopeParams k_rope{k, position_data, inv_freq_,   rows, config_.num_kv_heads,
                            d, stride,        DType::kBF16};
    if (gpu_rope_ == GpuRope::kFused) {
      RETURN_IF_ERROR(gpu_.attention->RopeAppend(0, gpu_.plan, q_rope, k_rope, v, stride));
    } else {
      RETURN_IF_ERROR(gpu_.backend->Rope(q_rope));
      RETURN_IF_ERROR(gpu_.backend->Rope(k_rope));
      RETURN_IF_ERROR(gpu_.attention->Append(0, gpu_.plan, k, v, stride));
    }
  }
  if (attend) {
    cpu_out->assign(rows * q_width, 0.0f);
    RETURN_IF_ERROR(cpu_.attention->Run(0, cpu_.plan, queries_.data(), cpu_out->data()));
    ASSIGN_OR_RETURN(q_device_, Upload(device, q_bits));
    std::vector<uint16_t> poison(rows * q_width, kPoisonBf16);
    ASSIGN_OR_RETURN(Buffer out_device, Upload(device, poison));
    RETURN_IF_ERROR(gpu_.attention->Run(0, gpu_.plan, q_device_.data(), out_device.data()));
    RETURN_IF_ERROR(gpu_.backend->Synchronize());
    std::vector<uint16_t> out_bits(poison.size());
    RETURN_IF_ERROR(device->CopyToHost(out_bits.data(), out_device.data(), out_bits.size() * 2));
    gpu_out->resize(out_bits.size());
    for (size_t i = 0; i < out_bits.size(); ++i) {
      (*gpu_out)[i] = out_bits[i] == kPoisonBf16 ? NAN : Bf16ToFloat(out_bits[i]);
    }
  }
  RETURN_IF_ERROR(gpu_.backend->Synchronize());
  for (const TwinChunk& chunk : chunks) {
    for (TwinSide* side : {&cpu_, &gpu_}) {
      RETURN_IF_ERROR(side->store->tables().Commit(chunk.seq, chunk.n));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint16_t>> KvTwin::GpuRotatedQueries() {
  const int64_t q_width = int64_t{num_q_heads_} * config_.head_dim;
  const int64_t stride = q_width + 2 * int64_t{config_.num_kv_heads} * config_.head_dim;
  std::vector<uint16_t> joined(joined_rows_count_ * stride);
  RETURN_IF_ERROR(gpu_.backend->memory()->CopyToHost(joined.data(), joined_rows_.data(),
                                                     joined.size() * sizeof(uint16_t)));
  std::vector<uint16_t> queries;
  for (int64_t r = 0; r < joined_rows_count_; ++r) {
    queries.insert(queries.end(), joined.begin() + r * stride,
                   joined.begin() + r * stride + q_width);
  }
  return queries;
}

absl::StatusOr<std::vector<float>> KvTwin::GpuDensePool(int layer) {
  return GpuPool(layer, /*streaming=*/false);
}

absl::StatusOr<std::vector<float>> KvTwin::GpuPool(int layer, bool streaming) {
  const KvPool& pool = streaming ? gpu_.store->streaming_pool() : gpu_.store->dense_pool();
  const size_t elements = static_cast<size_t>(pool.PageStride(layer)) * pool.num_pages();
  std::vector<uint16_t> bits(elements);
  RETURN_IF_ERROR(gpu_.backend->memory()->CopyToHost(bits.data(), pool.LayerBase(layer),
                                                     elements * sizeof(uint16_t)));
  std::vector<float> values(elements);
  for (size_t i = 0; i < elements; ++i) values[i] = Bf16ToFloat(bits[i]);
  return values;
}

}  // namespace lserve::cuda::testing
