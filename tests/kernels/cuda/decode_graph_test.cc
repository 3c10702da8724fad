// A decode step of the CUDA path captured in a CUDA graph: KV append with statistics, page
// scoring, top-k into device-resident selection rows and split-K decode attention over
// those rows, launched as one graph per step (a "select" graph on the steps the reuse
// schedule scores, a "reuse" graph on the others). Between replays the host only rewrites
// the step's inputs in place. Each replay must equal the same launches made directly, and
// attention must equal a float64 reference over the pages the rows hold plus the newest
// page, within the bf16 tolerance.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::Bf16Near;
using testing::Bf16ToFloat;
using testing::CudaDeviceTest;
using testing::RandomBf16;

#define CUDA_ASSERT(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

constexpr int kPage = 32;
constexpr int kLogical = 16;
constexpr int kDim = 128;
constexpr int kKvHeads = 2;
constexpr int kGroup = 4;
constexpr int kQHeads = kKvHeads * kGroup;
constexpr int kBudgetPages = 32;
constexpr int kSteps = 9;
constexpr int kReuse = 4;

// Device copies that the test frees at the end.
class DeviceArrays {
 public:
  ~DeviceArrays() {
    for (void* p : owned_) cudaFree(p);
  }
  template <typename T>
  T* Zeros(size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(1, n * sizeof(T))) != cudaSuccess) return nullptr;
    cudaMemset(p, 0, std::max<size_t>(1, n * sizeof(T)));
    owned_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* Copy(const std::vector<T>& host) {
    T* p = Zeros<T>(host.size());
    if (p != nullptr) cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return p;
  }

 private:
  std::vector<void*> owned_;
};

class DecodeGraphTest : public CudaDeviceTest {};

TEST_F(DecodeGraphTest, CapturedStepsEqualDirectLaunchesAndTheReference) {
  // Sequence 1 crosses a page boundary between selections; sequence 2 fits the budget.
  const std::vector<int32_t> prompt = {1500, 2559, 90};
  const int batch = static_cast<int>(prompt.size());
  DeviceArrays d;
  std::mt19937 rng(5);
  // Page tables with room for the decoded tokens, pages scattered over the pool.
  std::vector<int32_t> indptr{0};
  for (int32_t len : prompt) indptr.push_back(indptr.back() + (len + kSteps + kPage - 1) / kPage);
  std::vector<int32_t> order(indptr.back());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  PagedKvLayer kv;
  kv.dtype = DType::kBF16;
  kv.page_size = kPage;
  kv.logical_page_size = kLogical;
  kv.head_dim = kDim;
  kv.num_kv_heads = kKvHeads;
  kv.kv_head_slot = d.Copy(std::vector<int32_t>{0, 1});
  kv.kv_head_streaming = d.Copy(std::vector<uint8_t>{0, 0});
  kv.dense.num_heads = kKvHeads;
  kv.dense.page_stride = 2 * kKvHeads * kPage * kDim + 2 * kKvHeads * (kPage / kLogical) * kDim;
  kv.dense.base = d.Zeros<uint16_t>(order.size() * kv.dense.page_stride);
  PageTableView t;
  t.num_seqs = batch;
  t.dense_indptr = d.Copy(indptr);
  t.dense_indices = d.Copy(order);
  t.max_kv_len = *std::max_element(prompt.begin(), prompt.end()) + kSteps;  // capacity
  int32_t* kv_len = d.Copy(prompt);
  t.kv_len = kv_len;

  // Host copies of every K/V row (bf16 bits), [seq][position][kv head * dim].
  const int width = kKvHeads * kDim;
  std::vector<std::vector<uint16_t>> keys(batch), values(batch);
  {  // Prefill: one append of every prompt row.
    std::vector<uint16_t> k_rows, v_rows;
    std::vector<int32_t> q_indptr{0};
    for (int b = 0; b < batch; ++b) {
      keys[b] = RandomBf16(int64_t{prompt[b]} * width, 100 + b, -1.0f, 1.0f);
      values[b] = RandomBf16(int64_t{prompt[b]} * width, 200 + b, -1.0f, 1.0f);
      k_rows.insert(k_rows.end(), keys[b].begin(), keys[b].end());
      v_rows.insert(v_rows.end(), values[b].begin(), values[b].end());
      q_indptr.push_back(q_indptr.back() + prompt[b]);
    }
    AppendKvParams append;
    append.kv = kv;
    append.tables = t;
    append.tables.max_queries = *std::max_element(prompt.begin(), prompt.end());
    append.q_indptr = d.Copy(q_indptr);
    append.k = d.Copy(k_rows);
    append.v = d.Copy(v_rows);
    append.row_stride = width;
    LSERVE_ASSERT_OK(AppendKv(append, nullptr));
    CUDA_ASSERT(cudaDeviceSynchronize());
  }

  // The step's inputs and outputs, rewritten in place between replays.
  std::vector<int32_t> step_indptr(batch + 1);
  std::iota(step_indptr.begin(), step_indptr.end(), 0);
  t.max_queries = 1;
  uint16_t* q = d.Zeros<uint16_t>(batch * kQHeads * kDim);
  uint16_t* k = d.Zeros<uint16_t>(batch * width);
  uint16_t* v = d.Zeros<uint16_t>(batch * width);
  uint16_t* out = d.Zeros<uint16_t>(batch * kQHeads * kDim);
  // One selection row per (sequence, query head); one scoring job each.
  const int32_t max_pages = indptr.back();
  std::vector<PageScoreJob> jobs;
  std::vector<int32_t> rows, slots(batch * kQHeads);
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < kQHeads; ++h) {
      slots[b * kQHeads + h] = b * kQHeads + h;
      jobs.push_back({b, h / kGroup, h, 1, b, (b * kQHeads + h) * max_pages});
      rows.push_back(b * kQHeads + h);
    }
  }
  int32_t* selected = d.Zeros<int32_t>(rows.size() * kBudgetPages);
  int32_t* counts = d.Zeros<int32_t>(rows.size());
  float* scores = d.Zeros<float>(jobs.size() * max_pages);
  const PageScoreJob* jobs_d = d.Copy(jobs);

  ScorePagesParams score{kv, t, q, kQHeads * kDim, jobs_d, static_cast<int>(jobs.size()), scores};
  SelectPagesParams select;
  select.scores = scores;
  select.jobs = jobs_d;
  select.num_jobs = static_cast<int>(jobs.size());
  select.kv_len = kv_len;
  select.page_size = kPage;
  select.max_pages = kBudgetPages;
  select.selected = selected;
  select.counts = counts;
  select.out_rows = d.Copy(rows);
  AppendKvParams append;
  append.kv = kv;
  append.tables = t;
  append.q_indptr = d.Copy(step_indptr);
  append.k = k;
  append.v = v;
  append.row_stride = width;
  PagedAttentionParams attention;
  attention.kv = kv;
  attention.tables = t;
  attention.q_indptr = append.q_indptr;
  attention.q = q;
  attention.out = out;
  attention.q_row_stride = attention.out_row_stride = kQHeads * kDim;
  attention.num_q_heads = kQHeads;
  attention.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  attention.local = d.Copy(std::vector<int32_t>(batch, 0));
  attention.selection_slot = d.Copy(slots);
  attention.selection_counts = counts;
  attention.selected_pages = selected;
  attention.selection_stride = kBudgetPages;
  attention.max_keys = kBudgetPages * kPage;
  const DecodeLaunch launch = PlanDecode(attention, 132);
  ASSERT_GT(launch.splits, 1);
  void* workspace = d.Zeros<uint8_t>(launch.workspace_bytes);

  cudaStream_t stream = nullptr;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto step = [&](bool score_pages) -> absl::Status {
    RETURN_IF_ERROR(AppendKv(append, stream));
    if (score_pages) {
      RETURN_IF_ERROR(ScorePages(score, stream));
      RETURN_IF_ERROR(SelectPages(select, stream));
    }
    return PagedDecodeAttention(attention, launch, workspace, stream);
  };
  cudaGraphExec_t graphs[2] = {nullptr, nullptr};  // [0] reuse, [1] select
  for (int g = 0; g < 2; ++g) {
    cudaGraph_t graph = nullptr;
    CUDA_ASSERT(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const absl::Status captured = step(g == 1);
    CUDA_ASSERT(cudaStreamEndCapture(stream, &graph));
    LSERVE_ASSERT_OK(captured);
    CUDA_ASSERT(cudaGraphInstantiate(&graphs[g], graph, 0));
    CUDA_ASSERT(cudaGraphDestroy(graph));
  }

  std::vector<int32_t> len = prompt;
  const size_t out_elements = static_cast<size_t>(batch) * kQHeads * kDim;
  int64_t newest_added = 0;
  for (int s = 0; s < kSteps; ++s) {
    // The step's inputs: one more token per sequence.
    const std::vector<uint16_t> q_host = RandomBf16(out_elements, 300 + s, -1.0f, 1.0f);
    const std::vector<uint16_t> k_host = RandomBf16(batch * width, 400 + s, -1.0f, 1.0f);
    const std::vector<uint16_t> v_host = RandomBf16(batch * width, 500 + s, -1.0f, 1.0f);
    for (int b = 0; b < batch; ++b) {
      ++len[b];
      keys[b].insert(keys[b].end(), k_host.begin() + b * width, k_host.begin() + (b + 1) * width);
      values[b].insert(values[b].end(), v_host.begin() + b * width,
                       v_host.begin() + (b + 1) * width);
    }
    CUDA_ASSERT(cudaMemcpyAsync(kv_len, len.data(), batch * 4, cudaMemcpyHostToDevice, stream));
    CUDA_ASSERT(
        cudaMemcpyAsync(q, q_host.data(), q_host.size() * 2, cudaMemcpyHostToDevice, stream));
    CUDA_ASSERT(
        cudaMemcpyAsync(k, k_host.data(), k_host.size() * 2, cudaMemcpyHostToDevice, stream));
    CUDA_ASSERT(
        cudaMemcpyAsync(v, v_host.data(), v_host.size() * 2, cudaMemcpyHostToDevice, stream));
    const bool score_pages = s % kReuse == 0;
    CUDA_ASSERT(cudaGraphLaunch(graphs[score_pages ? 1 : 0], stream));
    std::vector<uint16_t> from_graph(out_elements), direct(out_elements);
    CUDA_ASSERT(
        cudaMemcpyAsync(from_graph.data(), out, out_elements * 2, cudaMemcpyDeviceToHost, stream));
    CUDA_ASSERT(cudaStreamSynchronize(stream));
    // The same launches made directly: append and selection rewrite what they wrote.
    LSERVE_ASSERT_OK(step(score_pages));
    CUDA_ASSERT(
        cudaMemcpyAsync(direct.data(), out, out_elements * 2, cudaMemcpyDeviceToHost, stream));
    std::vector<int32_t> row_pages(rows.size() * kBudgetPages), row_counts(rows.size());
    CUDA_ASSERT(cudaMemcpyAsync(row_pages.data(), selected, row_pages.size() * 4,
                                cudaMemcpyDeviceToHost, stream));
    CUDA_ASSERT(cudaMemcpyAsync(row_counts.data(), counts, row_counts.size() * 4,
                                cudaMemcpyDeviceToHost, stream));
    CUDA_ASSERT(cudaStreamSynchronize(stream));
    ASSERT_EQ(from_graph, direct) << "step " << s;

    // float64 reference over the row's pages plus the newest page.
    for (int b = 0; b < batch; ++b) {
      const int32_t newest = (len[b] + kPage - 1) / kPage - 1;
      for (int h = 0; h < kQHeads; ++h) {
        const int row = b * kQHeads + h;
        std::vector<int32_t> pages(row_pages.begin() + row * kBudgetPages,
                                   row_pages.begin() + row * kBudgetPages + row_counts[row]);
        ASSERT_LE(static_cast<int32_t>(pages.size()), kBudgetPages);
        if (pages.empty() || pages.back() < newest) {
          pages.push_back(newest);
          ++newest_added;
        }
        const int kv_head = h / kGroup;
        std::vector<double> logits;
        std::vector<int32_t> positions;
        for (int32_t page : pages) {
          for (int32_t pos = page * kPage; pos < std::min(len[b], (page + 1) * kPage); ++pos) {
            double dot = 0.0;
            for (int c = 0; c < kDim; ++c) {
              dot += double{Bf16ToFloat(q_host[row * kDim + c])} *
                     Bf16ToFloat(keys[b][int64_t{pos} * width + kv_head * kDim + c]);
            }
            logits.push_back(dot / std::sqrt(double{kDim}));
            positions.push_back(pos);
          }
        }
        const double top = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (double& l : logits) sum += (l = std::exp(l - top));
        for (int c = 0; c < kDim; ++c) {
          double ref = 0.0;
          for (size_t i = 0; i < positions.size(); ++i) {
            ref += logits[i] *
                   Bf16ToFloat(values[b][int64_t{positions[i]} * width + kv_head * kDim + c]);
          }
          ASSERT_TRUE(Bf16Near(direct[row * kDim + c], ref / sum, 1e-4))
              << "step " << s << " seq " << b << " head " << h << " channel " << c;
        }
      }
    }
  }
  EXPECT_GT(newest_added, 0);  // a reused selection was extended by a new page
  for (cudaGraphExec_t g : graphs) cudaGraphExecDestroy(g);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace lserve::cuda
