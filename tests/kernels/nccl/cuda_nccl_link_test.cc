// NcclLink between GPU 0 and GPU 1 of this process (one thread per rank): byte ranges of
// odd sizes arrive intact, in order; a peer that never joins or never sends makes Open or
// Wait give up at the deadline and leaves the link broken, instead of hanging; layers
// still being computed go only once written. Skipped without two GPUs.
#include <cuda_runtime.h>

#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/nccl/copy_ranges.h"
#include "kernels/nccl/nccl_link.h"

namespace lserve::nccl {
namespace {

using Clock = std::chrono::steady_clock;

int Devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

// Opens both ranks of one link at once.
void OpenPair(std::unique_ptr<NcclLink>* rank0, std::unique_ptr<NcclLink>* rank1) {
  absl::StatusOr<std::string> id = NcclLink::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  absl::StatusOr<std::unique_ptr<NcclLink>> second;
  std::thread peer([&] { second = NcclLink::Open(*id, 1, 1, deadline); });
  absl::StatusOr<std::unique_ptr<NcclLink>> first = NcclLink::Open(*id, 0, 0, deadline);
  peer.join();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  *rank0 = *std::move(first);
  *rank1 = *std::move(second);
}

// Sends ranges of `sizes` from GPU 0 to GPU 1, the receiver's ranges lying in reverse
// order in its buffer (order, not address, pairs them), and checks every byte.
void ExpectRangesArrive(const std::vector<size_t>& sizes, bool staged) {
  std::unique_ptr<NcclLink> sender, receiver;
  OpenPair(&sender, &receiver);
  size_t total = 0;
  for (size_t size : sizes) total += size;
  std::vector<uint8_t> host(total);
  for (size_t i = 0; i < total; ++i) host[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  uint8_t *src = nullptr, *dst = nullptr;
  cudaSetDevice(0);
  ASSERT_EQ(cudaMalloc(&src, total), cudaSuccess);
  cudaMemcpy(src, host.data(), total, cudaMemcpyHostToDevice);
  cudaSetDevice(1);
  ASSERT_EQ(cudaMalloc(&dst, total), cudaSuccess);
  cudaMemset(dst, 0, total);
  std::vector<ByteRange> sends, receives;
  size_t offset = 0;
  for (size_t size : sizes) {
    sends.push_back({src + offset, size});
    receives.push_back({dst + (total - offset - size), size});
    offset += size;
  }
  ASSERT_EQ(NcclLink::Staged(sends), staged);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  absl::Status received;
  std::thread peer([&] { received = receiver->Transfer(receives, deadline); });
  const absl::Status sent = sender->Transfer(sends, deadline);
  peer.join();
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(received.ok()) << received;
  std::vector<uint8_t> back(total);
  cudaSetDevice(1);
  cudaMemcpy(back.data(), dst, total, cudaMemcpyDeviceToHost);
  offset = 0;
  for (size_t size : sizes) {
    ASSERT_EQ(std::memcmp(back.data() + (total - offset - size), host.data() + offset, size), 0)
        << "range at " << offset;
    offset += size;
  }
  cudaFree(dst);
  cudaSetDevice(0);
  cudaFree(src);
}

TEST(NcclLinkTest, RangesOfOddSizesArriveInOrder) {
  if (Devices() < 2) GTEST_SKIP() << "needs two GPUs";
  // Large enough on average to go as they are (no staging).
  ExpectRangesArrive({1, 4097, 3, 64 << 20, 777777, 0, 64}, /*staged=*/false);
}

TEST(NcclLinkTest, ScatteredSmallRangesGoThroughTheStagingBufferIntact) {
  if (Devices() < 2) GTEST_SKIP() << "needs two GPUs";
  // ~2900 ranges of 16 B to 200 KiB (odd sizes among them), 290 MB in all: more than one
  // 256 MiB chunk, with ranges split across the chunk boundary.
  std::vector<size_t> sizes;
  size_t total = 0;
  for (int i = 0; total < (size_t{290} << 20); ++i) {
    sizes.push_back(i % 7 == 0 ? 16 + i % 13 : 4096 * (1 + (i * 37) % 50) + (i % 3));
    total += sizes.back();
  }
  ExpectRangesArrive(sizes, /*staged=*/true);
}

void SleepOnStream(void* ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(reinterpret_cast<intptr_t>(ms)));
}

// Layers still being written on another stream of GPU 0 (each behind a 30 ms pause) are
// sent as their events pass: the receiver gets the written bytes, never the zeros that
// were there when the transfer was queued.
void ExpectGatedLayersArrive(size_t range_bytes, int ranges_per_layer, bool staged) {
  constexpr int kLayers = 6;
  std::unique_ptr<NcclLink> sender, receiver;
  OpenPair(&sender, &receiver);
  const size_t layer_bytes = range_bytes * ranges_per_layer;
  const size_t total = layer_bytes * kLayers;
  std::vector<uint8_t> host(total);
  for (size_t i = 0; i < total; ++i) host[i] = static_cast<uint8_t>(1 + (i * 40503u >> 7) % 251);
  uint8_t *pattern = nullptr, *src = nullptr, *dst = nullptr;
  cudaSetDevice(0);
  ASSERT_EQ(cudaMalloc(&pattern, total), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&src, total), cudaSuccess);
  cudaMemcpy(pattern, host.data(), total, cudaMemcpyHostToDevice);
  cudaMemset(src, 0, total);
  cudaStream_t compute = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  std::vector<cudaEvent_t> events(kLayers);
  std::vector<ByteRange> sends, receives;
  cudaSetDevice(1);
  ASSERT_EQ(cudaMalloc(&dst, total), cudaSuccess);
  cudaMemset(dst, 0, total);
  cudaSetDevice(0);
  for (int layer = 0; layer < kLayers; ++layer) {
    ASSERT_EQ(cudaEventCreateWithFlags(&events[layer], cudaEventDisableTiming), cudaSuccess);
    const size_t at = layer * layer_bytes;
    cudaLaunchHostFunc(compute, SleepOnStream, reinterpret_cast<void*>(intptr_t{30}));
    cudaMemcpyAsync(src + at, pattern + at, layer_bytes, cudaMemcpyDeviceToDevice, compute);
    cudaEventRecord(events[layer], compute);
    for (int r = 0; r < ranges_per_layer; ++r) {
      sends.push_back({src + at + r * range_bytes, range_bytes, layer});
      receives.push_back({dst + at + r * range_bytes, range_bytes, layer});
    }
  }
  ASSERT_EQ(NcclLink::Staged(sends), staged);
  LayerGates gates;
  int asked = 0;
  gates.placed = [&](int layer) -> absl::StatusOr<void*> {
    EXPECT_GE(layer, asked);  // in order
    asked = layer;
    return static_cast<void*>(events[layer]);
  };
  gates.transfer_time = std::chrono::seconds(10);
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  absl::Status received;
  std::thread peer([&] { received = receiver->Transfer(receives, deadline); });
  const absl::Status sent = sender->Transfer(sends, deadline, &gates);
  peer.join();
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(received.ok()) << received;
  EXPECT_EQ(asked, kLayers - 1);
  std::vector<uint8_t> back(total);
  cudaSetDevice(1);
  cudaMemcpy(back.data(), dst, total, cudaMemcpyDeviceToHost);
  EXPECT_TRUE(back == host) << "a layer was sent before it was written";
  cudaFree(dst);
  cudaSetDevice(0);
  cudaStreamSynchronize(compute);
  for (cudaEvent_t event : events) cudaEventDestroy(event);
  cudaStreamDestroy(compute);
  cudaFree(src);
  cudaFree(pattern);
}

TEST(NcclLinkTest, GatedLayersAreSentOnlyOnceWritten) {
  if (Devices() < 2) GTEST_SKIP() << "needs two GPUs";
  ExpectGatedLayersArrive(size_t{40} << 20, 2, /*staged=*/false);
  ExpectGatedLayersArrive(size_t{100} << 10, 300, /*staged=*/true);
}

// The gather/scatter kernel on one GPU: odd sizes and misaligned ends (the byte path)
// beside aligned ones (the 16-byte path), against a host copy.
TEST(CopyRangesTest, CopiesEveryRangeOnOneDevice) {
  if (Devices() < 1) GTEST_SKIP() << "needs a GPU";
  cudaSetDevice(0);
  const size_t total = 3 << 20;
  std::vector<uint8_t> host(total);
  for (size_t i = 0; i < total; ++i) host[i] = static_cast<uint8_t>(i * 7 + (i >> 9));
  uint8_t *src = nullptr, *dst = nullptr;
  ASSERT_EQ(cudaMalloc(&src, total), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dst, total), cudaSuccess);
  cudaMemcpy(src, host.data(), total, cudaMemcpyHostToDevice);
  cudaMemset(dst, 0, total);
  std::vector<RangeCopy> copies;
  std::vector<uint8_t> expected(total, 0);
  size_t from = 0, to = 0;
  for (int i = 0; from + 300000 < total && to + 300000 < total; ++i) {
    const size_t bytes = i % 3 == 0 ? 4096 * (i % 50 + 1) : 1 + (i * 7919) % 200000;
    const size_t shift = i % 4 == 1 ? 3 : 0;  // misaligned source
    copies.push_back({src + from + shift, dst + to, bytes});
    std::memcpy(expected.data() + to, host.data() + from + shift, bytes);
    from += bytes + shift + 16;
    to += bytes + 32;
  }
  RangeCopy* descriptors = nullptr;
  ASSERT_EQ(cudaMalloc(&descriptors, copies.size() * sizeof(RangeCopy)), cudaSuccess);
  cudaMemcpy(descriptors, copies.data(), copies.size() * sizeof(RangeCopy), cudaMemcpyHostToDevice);
  ASSERT_TRUE(LaunchCopyRanges(descriptors, static_cast<int>(copies.size()), nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> back(total);
  cudaMemcpy(back.data(), dst, total, cudaMemcpyDeviceToHost);
  EXPECT_EQ(back, expected) << copies.size() << " copies";
  cudaFree(descriptors);
  cudaFree(dst);
  cudaFree(src);
}

TEST(NcclLinkTest, APeerThatNeverJoinsOrNeverSendsTimesOut) {
  if (Devices() < 2) GTEST_SKIP() << "needs two GPUs";
  absl::StatusOr<std::string> id = NcclLink::NewUniqueId();
  ASSERT_TRUE(id.ok());
  const auto start = Clock::now();
  auto lonely = NcclLink::Open(*id, 0, 0, start + std::chrono::seconds(3));
  EXPECT_EQ(lonely.status().code(), absl::StatusCode::kDeadlineExceeded) << lonely.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(20));

  std::unique_ptr<NcclLink> sender, receiver;
  OpenPair(&sender, &receiver);
  uint8_t* dst = nullptr;
  cudaSetDevice(1);
  ASSERT_EQ(cudaMalloc(&dst, 1 << 20), cudaSuccess);
  const ByteRange range{dst, 1 << 20};
  const auto waited = Clock::now();
  const absl::Status status = receiver->Transfer({&range, 1}, waited + std::chrono::seconds(2));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_LT(Clock::now() - waited, std::chrono::seconds(20));
  EXPECT_TRUE(receiver->broken());
  EXPECT_EQ(receiver->Transfer({&range, 1}, Clock::now() + std::chrono::seconds(1)).code(),
            absl::StatusCode::kUnavailable);
  sender->Abort("the test is done");
  cudaFree(dst);
}

}  // namespace
}  // namespace lserve::nccl
