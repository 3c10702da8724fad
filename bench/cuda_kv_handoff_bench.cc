// KV hand-off bandwidth between two GPUs over NCCL: whole sequences of Llama-3-8B KV
// geometry (32 layers, 8 KV heads, head dim 128, page 64, bf16) moved page run by page
// run from one device's pools into pages claimed in the other's, exactly as the workers do
// (KvStore::ExportPages / ImportPages, KvTransferRanges, NcclLink), dense and hybrid (half
// the heads streaming: the streaming pool holds only sink + window). Beside it, in the
// same run and on the same link, raw ncclSend/ncclRecv of one contiguous buffer. Also the
// device memory one communicator takes, and what a per-pair scheme costs at 128 GPUs.
//
// Usage: cuda_kv_handoff_bench [--lengths=8192,...] [--modes=dense,hybrid] [--repeats=3]
//   [--raw_mib=16,64,256,1024,4096] [--layouts=fresh,scattered] [--gates=PATH] [--json=PATH]
// "fresh": stores with nothing else in them (pages consecutive on both sides); "scattered":
// each store's free pages shuffled first, as on a server that has run for a while.
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/nccl/copy_ranges.h"
#include "kernels/nccl/nccl_link.h"
#include "kernels/nccl/staging_plan.h"
#include "kvstore/kv_store.h"
#include "worker/attention/head_classifier.h"
#include "worker/service/kv_page_runs.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

void Check(const absl::Status& status, const char* what) {
  if (status.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

int64_t FreeBytes(int device) {
  size_t free = 0, total = 0;
  cudaSetDevice(device);
  cudaMemGetInfo(&free, &total);
  return static_cast<int64_t>(free);
}

// Runs `sender` on GPU 0's thread and `receiver` on GPU 1's, started together; returns
// the seconds until both are done.
double RunPair(const std::function<void()>& sender, const std::function<void()>& receiver) {
  std::barrier sync(2);
  Clock::time_point start, end0, end1;
  std::thread peer([&] {
    cudaSetDevice(1);
    sync.arrive_and_wait();
    receiver();
    end1 = Clock::now();
  });
  cudaSetDevice(0);
  sync.arrive_and_wait();
  start = Clock::now();
  sender();
  end0 = Clock::now();
  peer.join();
  return std::chrono::duration<double>(std::max(end0, end1) - start).count();
}

KvStoreConfig StoreConfig(const HeadLayout& layout, int64_t tokens) {
  KvStoreConfig c;
  c.num_layers = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.page_size = 64;
  c.logical_page_size = 16;
  c.layout = layout;
  c.dtype = DType::kBF16;
  c.max_chunk_tokens = 8192;
  c.num_dense_pages = tokens / c.page_size + 2;
  c.num_streaming_pages = (c.sink + c.prefill_local + c.max_chunk_tokens) / c.page_size + 4;
  return c;
}

// Reads `pages` of both pools back to the host (first, middle and last dense page, and
// every streaming page) for comparison.
std::vector<uint8_t> Sample(const KvStore& store, const KvPlacement& pages) {
  std::vector<uint8_t> bytes;
  auto read = [&](const KvPool& pool, int32_t page) {
    std::vector<uint8_t> one(pool.PageBytesAllLayers());
    Check(pool.ReadPage(page, one.data()), "ReadPage");
    bytes.insert(bytes.end(), one.begin(), one.end());
  };
  const size_t n = pages.dense.size();
  if (n > 0) {
    for (size_t i : {size_t{0}, n / 2, n - 1}) read(store.dense_pool(), pages.dense[i]);
  }
  for (int32_t page : pages.streaming) read(store.streaming_pool(), page);
  return bytes;
}

// Shuffles the order in which `store` hands out free pages (both pools).
void ScatterFreePages(KvStore& store, uint64_t seed) {
  std::mt19937_64 random(seed);
  for (KvPoolKind kind : {KvPoolKind::kDense, KvPoolKind::kStreaming}) {
    PageAllocator& allocator = store.tables().allocator(kind);
    absl::StatusOr<std::vector<PageId>> all = allocator.AllocateMany(allocator.num_free());
    Check(all.status(), "AllocateMany");
    std::shuffle(all->begin(), all->end(), random);
    for (PageId page : *all) Check(allocator.Release(page), "Release");
  }
}

// The staging path's own cost on GPU 0: a 128K-token dense sequence's pages (every page
// its own 272 KiB range, scattered over the pool) gathered into two 128 MiB buffers in
// turn and scattered back, as the two sides of a staged transfer do; GB/s of KV moved per side.
nlohmann::json StagingCopyBandwidth(int repeats) {
  cudaSetDevice(0);
  const size_t page_bytes = 278528, pages = 2048 * 32;  // 32 layers x 2048 pages
  uint8_t *pool = nullptr, *staging = nullptr;
  cudaMalloc(&pool, page_bytes * pages);
  constexpr size_t kBufferBytes = size_t{128} << 20;
  cudaMalloc(&staging, 2 * kBufferBytes);
  void* const buffers[] = {staging, staging + kBufferBytes};
  std::vector<size_t> order(pages);
  for (size_t i = 0; i < pages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(3));
  std::vector<nccl::ByteRange> ranges;
  for (size_t page : order) ranges.push_back({pool + page * page_bytes, page_bytes});
  nlohmann::json out;
  std::printf("staging copies, %zu ranges of %zu KiB on GPU 0\n", ranges.size(), page_bytes >> 10);
  for (bool gather : {true, false}) {
    const nccl::StagingPlan plan = nccl::PlanStaging(ranges, gather, buffers, kBufferBytes);
    nccl::RangeCopy* descriptors = nullptr;
    cudaMalloc(&descriptors, plan.copies.size() * sizeof(nccl::RangeCopy));
    cudaMemcpy(descriptors, plan.copies.data(), plan.copies.size() * sizeof(nccl::RangeCopy),
               cudaMemcpyHostToDevice);
    double best = 1e30;
    for (int r = 0; r < repeats + 1; ++r) {
      cudaDeviceSynchronize();
      const Clock::time_point start = Clock::now();
      for (size_t c = 0; c < plan.chunk_first.size(); ++c) {
        Check(nccl::LaunchCopyRanges(descriptors + plan.chunk_first[c],
                                     static_cast<int>(plan.chunk_end(c) - plan.chunk_first[c]),
                                     nullptr),
              "copy ranges");
      }
      cudaDeviceSynchronize();
      const double t = std::chrono::duration<double>(Clock::now() - start).count();
      if (r > 0) best = std::min(best, t);
    }
    const double gbs = page_bytes * pages / best / 1e9;
    std::printf("  %s: %.2f ms for %.1f GB, %.0f GB/s\n", gather ? "gather" : "scatter", best * 1e3,
                page_bytes * pages / 1e9, gbs);
    out[gather ? "gather" : "scatter"] = {{"seconds", best}, {"gbs", gbs}};
    cudaFree(descriptors);
  }
  out["bytes"] = page_bytes * pages;
  out["ranges"] = ranges.size();
  cudaFree(staging);
  cudaFree(pool);
  return out;
}

int Main(int argc, char** argv) {
  using bench::FlagValue;
  using bench::IntList;
  const std::vector<int64_t> lengths = IntList(
      FlagValue(argc, argv, "lengths", "8192,16384,32768,65536,131072"), "cuda_kv_handoff_bench");
  const std::vector<std::string> modes =
      absl::StrSplit(FlagValue(argc, argv, "modes", "dense,hybrid"), ',', absl::SkipEmpty());
  const int repeats = std::stoi(FlagValue(argc, argv, "repeats", "3"));
  const std::vector<int64_t> raw_mib =
      IntList(FlagValue(argc, argv, "raw_mib", "16,64,256,1024,4096"), "cuda_kv_handoff_bench");
  const std::string gates = FlagValue(argc, argv, "gates");
  const std::vector<std::string> layouts =
      absl::StrSplit(FlagValue(argc, argv, "layouts", "fresh,scattered"), ',', absl::SkipEmpty());
  int devices = 0;
  cudaGetDeviceCount(&devices);
  if (devices < 1) {
    std::fprintf(stderr, "needs a GPU\n");
    return 1;
  }
  nlohmann::json report = bench::Provenance(argc, argv);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  report["gpu"] = prop.name;
  report["staging_copy"] = StagingCopyBandwidth(repeats);
  if (devices < 2) {
    std::fprintf(stderr, "the hand-off needs two GPUs, found %d: staging copies only\n", devices);
    bench::WriteReport(report, FlagValue(argc, argv, "json"));
    return 0;
  }

  // One link for everything, opened by both ranks at once.
  const int64_t free0 = FreeBytes(0), free1 = FreeBytes(1);
  absl::StatusOr<std::string> id = nccl::NcclLink::NewUniqueId();
  Check(id.status(), "ncclGetUniqueId");
  std::unique_ptr<nccl::NcclLink> link0, link1;
  const auto open_deadline = Clock::now() + std::chrono::seconds(60);
  const double open_s = RunPair(
      [&] {
        auto l = nccl::NcclLink::Open(*id, 0, 0, open_deadline);
        Check(l.status(), "open rank 0");
        link0 = *std::move(l);
      },
      [&] {
        auto l = nccl::NcclLink::Open(*id, 1, 1, open_deadline);
        Check(l.status(), "open rank 1");
        link1 = *std::move(l);
      });
  const auto deadline = [] { return Clock::now() + std::chrono::seconds(120); };

  // Raw: one contiguous buffer each way round, 0 -> 1.
  nlohmann::json raw = nlohmann::json::array();
  std::printf("raw ncclSend/ncclRecv, GPU 0 -> GPU 1\n%10s %10s\n", "MiB", "GB/s");
  for (int64_t mib : raw_mib) {
    const size_t bytes = static_cast<size_t>(mib) << 20;
    void *src = nullptr, *dst = nullptr;
    cudaSetDevice(0);
    cudaMalloc(&src, bytes);
    cudaSetDevice(1);
    cudaMalloc(&dst, bytes);
    std::vector<double> times;
    for (int r = 0; r < repeats + 1; ++r) {
      const nccl::ByteRange s{src, bytes}, d{dst, bytes};
      const double t = RunPair(
          [&] {
            Check(link0->Transfer({&s, 1}, deadline()), "send");
          },
          [&] {
            Check(link1->Transfer({&d, 1}, deadline()), "recv");
          });
      if (r > 0) times.push_back(t);  // the first warms the connection
    }
    const double best = *std::min_element(times.begin(), times.end());
    std::printf("%10lld %10.1f\n", static_cast<long long>(mib), bytes / best / 1e9);
    raw.push_back({{"mib", mib}, {"seconds", best}, {"gbs", bytes / best / 1e9}});
    cudaSetDevice(0);
    cudaFree(src);
    cudaSetDevice(1);
    cudaFree(dst);
  }
  report["raw"] = raw;
  // The link's memory once its connection is up (NCCL connects peers on first use).
  const int64_t link_bytes0 = free0 - FreeBytes(0), link_bytes1 = free1 - FreeBytes(1);
  report["communicator"] = {
      {"open_seconds", open_s},
      {"device_bytes_at_init", {link0->device_bytes(), link1->device_bytes()}},
      {"device_bytes_connected", {link_bytes0, link_bytes1}},
      {"per_pair_bytes_at_128_gpus", std::max(link_bytes0, link_bytes1) * 127}};
  std::printf(
      "communicator: %.1f / %.1f MiB on GPU 0 / 1 once connected (%.1f MiB at init); "
      "a per-pair scheme at 128 GPUs: %.1f GiB per GPU\n",
      link_bytes0 / 1048576.0, link_bytes1 / 1048576.0, link0->device_bytes() / 1048576.0,
      std::max(link_bytes0, link_bytes1) * 127 / 1073741824.0);

  nlohmann::json rows = nlohmann::json::array();
  std::printf(
      "\nKV hand-off, Llama-3-8B KV geometry, page 64, bf16\n%9s %8s %7s %9s %9s %9s %8s "
      "%6s %6s\n",
      "pages", "mode", "tokens", "MiB", "ms", "GB/s", "raw GB/s", "ratio", "ranges");
  for (const std::string& page_layout : layouts) {
    for (const std::string& mode : modes) {
      SparseAttentionConfig attention;
      attention.streaming_heads = mode == "hybrid";
      attention.streaming_ratio = 0.5f;
      attention.gate_file = gates;
      absl::StatusOr<HeadLayout> layout = HeadLayoutFor(attention, 32, 8);
      Check(layout.status(), "head layout");
      for (int64_t tokens : lengths) {
        const KvStoreConfig config = StoreConfig(*layout, tokens);
        cudaSetDevice(0);
        auto sender = KvStore::Create(config, cuda::DeviceMemory());
        Check(sender.status(), "sender store");
        cudaSetDevice(1);
        auto receiver = KvStore::Create(config, cuda::DeviceMemory());
        Check(receiver.status(), "receiver store");
        if (page_layout == "scattered") {
          ScatterFreePages(**sender, 1);
          ScatterFreePages(**receiver, 2);
        }
        // The sender's sequence, built as prefill chunks build it; a pattern in its pages.
        cudaSetDevice(0);
        KvPageTables& tables = (*sender)->tables();
        Check(tables.AddSequence(1), "AddSequence");
        for (int64_t done = 0; done < tokens; done += config.max_chunk_tokens) {
          const int64_t chunk = std::min<int64_t>(config.max_chunk_tokens, tokens - done);
          Check(tables.Extend(1, chunk, false), "Extend");
          Check(tables.Commit(1, chunk), "Commit");
        }
        absl::StatusOr<KvPageExport> exported = (*sender)->ExportPages(1);
        Check(exported.status(), "ExportPages");
        for (const KvPool* pool : {&(*sender)->dense_pool(), &(*sender)->streaming_pool()}) {
          for (int layer = 0; layer < pool->num_layers(); ++layer) {
            const size_t bytes = pool->PageBytes(layer) * pool->num_pages();
            if (bytes > 0) cudaMemset(pool->LayerBase(layer), (layer * 7 + 3) & 0xff, bytes);
          }
        }
        // The link's stream does not wait for the default stream's memsets.
        cudaDeviceSynchronize();
        std::vector<double> times;
        std::vector<KvByteRange> sends, receives;
        bool equal = false;
        for (int r = 0; r < repeats; ++r) {
          cudaSetDevice(1);
          absl::StatusOr<KvPlacement> claimed = (*receiver)->ImportPages(2, exported->manifest);
          Check(claimed.status(), "ImportPages");
          sends = KvTransferRanges((*sender)->dense_pool(), (*sender)->streaming_pool(),
                                   exported->pages, *claimed);
          receives = KvTransferRanges((*receiver)->dense_pool(), (*receiver)->streaming_pool(),
                                      *claimed, exported->pages);
          std::vector<nccl::ByteRange> s, d;
          for (const KvByteRange& x : sends) s.push_back({x.data, x.bytes, x.layer});
          for (const KvByteRange& x : receives) d.push_back({x.data, x.bytes, x.layer});
          times.push_back(RunPair([&] { Check(link0->Transfer(s, deadline()), "send KV"); },
                                  [&] { Check(link1->Transfer(d, deadline()), "receive KV"); }));
          if (r == 0) {
            cudaSetDevice(0);
            const std::vector<uint8_t> a = Sample(**sender, exported->pages);
            cudaSetDevice(1);
            equal = a == Sample(**receiver, *claimed);
          }
          cudaSetDevice(1);
          Check((*receiver)->FreeSequence(2), "FreeSequence");
        }
        const int64_t bytes = TotalBytes(sends);
        const double best = *std::min_element(times.begin(), times.end());
        // Raw bandwidth at the nearest measured size at or below the hand-off's bytes.
        double raw_gbs = 0;
        for (const auto& row : raw) {
          if ((row["mib"].get<int64_t>() << 20) <= bytes) raw_gbs = row["gbs"].get<double>();
        }
        const double gbs = bytes / best / 1e9;
        std::printf("%9s %8s %7lld %9.0f %9.2f %9.1f %8.1f %6.2f %6zu %s\n", page_layout.c_str(),
                    mode.c_str(), static_cast<long long>(tokens), bytes / 1048576.0, best * 1e3,
                    gbs, raw_gbs, raw_gbs > 0 ? gbs / raw_gbs : 0.0, sends.size(),
                    equal ? "" : "MISMATCH");
        rows.push_back({{"mode", mode},
                        {"tokens", tokens},
                        {"bytes", bytes},
                        {"seconds", best},
                        {"all_seconds", times},
                        {"gbs", gbs},
                        {"raw_gbs_at_or_below", raw_gbs},
                        {"ratio_to_raw", raw_gbs > 0 ? gbs / raw_gbs : 0.0},
                        {"ranges", sends.size()},
                        {"sampled_pages_equal", equal}});
        if (!equal) report["mismatch"] = true;
      }
    }
  }
  report["handoff"] = rows;
  bench::WriteReport(report, FlagValue(argc, argv, "json"));
  return report.contains("mismatch") ? 1 : 0;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
