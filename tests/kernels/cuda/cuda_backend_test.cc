// The CUDA backend object and KV pools in device memory: creation by name, per-step
// staging, bf16 weight upload, and a sequence exported from a device store and imported
// into another, byte for byte.
#include "kernels/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <vector>

#include "kernels/backend_registry.h"
#include "kvstore/kv_store.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;

class CudaBackendTest : public CudaDeviceTest {};

TEST_F(CudaBackendTest, StagesHostArraysAndUploadsWeightsAsBf16) {
  LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Backend> backend, CreateBackend("cuda"));
  EXPECT_EQ(backend->name(), "cuda");
  EXPECT_TRUE(backend->CheckEngineSupport().ok());
  backend->BeginStep();
  std::vector<int32_t> host(1000);
  for (int i = 0; i < 1000; ++i) host[i] = i * 7 - 3;
  std::vector<void*> staged;
  for (int round = 0; round < 50; ++round) {  // more than the first arena holds
    LSERVE_ASSERT_OK_AND_ASSIGN(void* device, backend->Stage(host.data(), host.size() * 4));
    staged.push_back(device);
  }
  LSERVE_ASSERT_OK(backend->Synchronize());
  for (void* device : staged) {
    std::vector<int32_t> back(host.size());
    LSERVE_ASSERT_OK(backend->memory()->CopyToHost(back.data(), device, back.size() * 4));
    ASSERT_EQ(back, host);
  }
  const std::vector<float> weights = {1.0f, -2.5f, 3.140625f, 1e-3f};
  LSERVE_ASSERT_OK_AND_ASSIGN(BackendTensor tensor, backend->UploadWeights(weights.data(), 4));
  EXPECT_EQ(tensor.dtype, DType::kBF16);
  std::vector<uint16_t> bits(4);
  LSERVE_ASSERT_OK(backend->memory()->CopyToHost(bits.data(), tensor.data, 8));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(bits[i], testing::FloatToBf16(weights[i])) << i;
  }
}

TEST_F(CudaBackendTest, DeviceKvStoreExportsAndImportsSequencesByteForByte) {
  KvStoreConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 64;
  config.page_size = 16;
  config.logical_page_size = 16;
  config.num_dense_pages = 32;
  config.num_streaming_pages = 32;
  config.layout = HeadLayout::FromStreamingMask({{false, true}, {true, false}});
  config.sink = 16;
  config.prefill_local = 64;
  config.decode_local = 32;
  config.max_chunk_tokens = 32;
  config.dtype = DType::kBF16;
  LSERVE_ASSERT_OK_AND_ASSIGN(auto source, KvStore::Create(config, DeviceMemory()));
  LSERVE_ASSERT_OK_AND_ASSIGN(auto target, KvStore::Create(config, DeviceMemory()));
  LSERVE_ASSERT_OK(source->AddSequence(1));
  for (int chunk = 0; chunk < 4; ++chunk) {
    LSERVE_ASSERT_OK(source->tables().Extend(1, 25, false));
    LSERVE_ASSERT_OK(source->tables().Commit(1, 25));
  }
  // Fill every page the sequence holds with a recognizable pattern.
  std::vector<uint8_t> pattern(source->dense_pool().PageBytesAllLayers());
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 31 + 7);
  for (PageId page : source->tables().DensePages(1)) {
    LSERVE_ASSERT_OK(source->dense_pool().WritePage(page, pattern.data()));
  }
  LSERVE_ASSERT_OK_AND_ASSIGN(KvSnapshot snapshot, source->ExportSequence(1));
  EXPECT_EQ(snapshot.num_dense_pages, 7);
  LSERVE_ASSERT_OK(target->ImportSequence(5, snapshot));
  LSERVE_ASSERT_OK_AND_ASSIGN(KvSnapshot again, target->ExportSequence(5));
  EXPECT_EQ(again.dense_bytes, snapshot.dense_bytes);
  EXPECT_EQ(again.streaming_bytes, snapshot.streaming_bytes);
  std::vector<uint8_t> read(pattern.size());
  LSERVE_ASSERT_OK(target->dense_pool().ReadPage(target->tables().DensePages(5)[3], read.data()));
  EXPECT_EQ(read, pattern);
}

}  // namespace
}  // namespace lserve::cuda
