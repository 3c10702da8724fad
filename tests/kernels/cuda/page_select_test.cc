// The GPU page selector against the CPU backend's: page scores over the same stored
// statistics must be bitwise equal (same summation order and roundings), and top-k
// selections equal, ties included (equal scores prefer the lower page index).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <random>
#include <utility>
#include <vector>

#include "tests/kernels/cuda/paged_kv_twin.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;
using testing::KvTwin;
using testing::TwinChunk;

template <typename T>
absl::StatusOr<Buffer> Upload(MemorySpace* memory, const std::vector<T>& host) {
  ASSIGN_OR_RETURN(Buffer buffer, Buffer::Allocate(memory, host.size() * sizeof(T)));
  RETURN_IF_ERROR(memory->CopyFromHost(buffer.data(), host.data(), host.size() * sizeof(T)));
  return buffer;
}

template <typename T>
std::vector<T> Download(MemorySpace* memory, const Buffer& buffer, size_t n) {
  std::vector<T> host(n);
  EXPECT_TRUE(memory->CopyToHost(host.data(), buffer.data(), n * sizeof(T)).ok());
  return host;
}

struct Selection {
  std::vector<int32_t> selected;
  std::vector<int32_t> counts;
};

// Runs SelectPages on a backend whose memory holds copies of the host arrays (with the
// after_scoring hint: the copies are done before the kernel starts).
Selection Select(Backend& backend, const std::vector<float>& scores,
                 const std::vector<PageScoreJob>& jobs, const std::vector<int32_t>& kv_len,
                 int page_size, int max_pages, bool after_scoring = false) {
  MemorySpace* memory = backend.memory();
  auto scores_d = Upload(memory, scores);
  auto jobs_d = Upload(memory, jobs);
  auto len_d = Upload(memory, kv_len);
  auto selected_d = Buffer::Allocate(memory, jobs.size() * max_pages * sizeof(int32_t));
  auto counts_d = Buffer::Allocate(memory, jobs.size() * sizeof(int32_t));
  EXPECT_TRUE(scores_d.ok() && jobs_d.ok() && len_d.ok() && selected_d.ok() && counts_d.ok());
  SelectPagesParams p;
  p.scores = scores_d->as<float>();
  p.jobs = jobs_d->as<PageScoreJob>();
  p.num_jobs = static_cast<int>(jobs.size());
  p.kv_len = len_d->as<int32_t>();
  p.page_size = page_size;
  p.max_pages = max_pages;
  p.selected = selected_d->as<int32_t>();
  p.counts = counts_d->as<int32_t>();
  p.after_scoring = after_scoring;
  EXPECT_TRUE(backend.SelectPages(p).ok());
  EXPECT_TRUE(backend.Synchronize().ok());
  Selection s{Download<int32_t>(memory, *selected_d, jobs.size() * max_pages),
              Download<int32_t>(memory, *counts_d, jobs.size())};
  return s;
}

void ExpectSameSelections(const Selection& cpu, const Selection& gpu, int max_pages) {
  ASSERT_EQ(cpu.counts, gpu.counts);
  for (size_t j = 0; j < cpu.counts.size(); ++j) {
    for (int i = 0; i < cpu.counts[j]; ++i) {
      ASSERT_EQ(cpu.selected[j * max_pages + i], gpu.selected[j * max_pages + i])
          << "job " << j << " entry " << i;
    }
  }
}

class PageSelectTest : public CudaDeviceTest {};

TEST_F(PageSelectTest, TopPagesEqualTheCpuWithManyTies) {
  auto cpu = CreateBackend("cpu", {1, 0});
  auto gpu = CreateBackend("cuda");
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  std::mt19937 rng(3);
  for (int max_pages : {1, 2, 7, 64, 300}) {
    for (int page_size : {16, 64}) {
      std::vector<int32_t> kv_len;
      std::vector<PageScoreJob> jobs;
      std::vector<float> scores;
      for (int j = 0; j < 12; ++j) {
        const int32_t len = std::uniform_int_distribution<int32_t>(1, 20000 * page_size / 16)(rng);
        const int32_t pages = (len + page_size - 1) / page_size;
        kv_len.push_back(len);
        jobs.push_back({j, 0, 0, 1, 0, static_cast<int32_t>(scores.size())});
        // A few distinct values (ties everywhere), signed zeros, and wide-range ones.
        std::uniform_int_distribution<int> pick(0, 9);
        std::normal_distribution<float> normal(0.0f, 100.0f);
        for (int32_t i = 0; i < pages; ++i) {
          const int k = pick(rng);
          scores.push_back(k < 3    ? static_cast<float>(k)
                           : k == 3 ? -0.0f
                           : k == 4 ? 0.0f
                                    : normal(rng));
        }
      }
      SCOPED_TRACE(::testing::Message() << "max_pages " << max_pages << " page " << page_size);
      const Selection expected = Select(**cpu, scores, jobs, kv_len, page_size, max_pages);
      ExpectSameSelections(expected, Select(**gpu, scores, jobs, kv_len, page_size, max_pages),
                           max_pages);
      ExpectSameSelections(
          expected, Select(**gpu, scores, jobs, kv_len, page_size, max_pages, true), max_pages);
    }
  }
}

TEST_F(PageSelectTest, SearchesThatSettleAfterOneTwoOrThreeDigitsSelectLikeTheCpu) {
  // Job d's scores differ first in their d-th byte (as ordered keys), so the radix search
  // has every key it needs after d passes; a job of equal keys and one mixing both signs
  // run all four.
  auto cpu = CreateBackend("cpu", {1, 0});
  auto gpu = CreateBackend("cuda");
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  std::mt19937 rng(11);
  const int page_size = 16;
  for (int max_pages : {1, 5, 16, 40}) {
    std::vector<int32_t> kv_len;
    std::vector<PageScoreJob> jobs;
    std::vector<float> scores;
    for (int job = 0; job < 5; ++job) {
      std::vector<float> values;
      for (int i = 0; i < 100; ++i) {
        switch (job) {
          case 0:  // exponents two apart: distinct top bytes, both signs
            values.push_back((i % 2 ? -1.0f : 1.0f) * std::ldexp(1.5f, 2 * (i / 2) - 50));
            break;
          case 1:  // one exponent, distinct top mantissa bits: distinct second bytes
            values.push_back(1.0f + static_cast<float>(i) / 128.0f);
            break;
          case 2:  // distinct third bytes
            values.push_back(1.0f + static_cast<float>(i) / 32768.0f);
            break;
          case 3:
            values.push_back(2.5f);
            break;
          default:
            values.push_back(std::normal_distribution<float>(0.0f, 1.0f)(rng));
        }
      }
      std::shuffle(values.begin(), values.end(), rng);
      kv_len.push_back(static_cast<int32_t>(values.size()) * page_size);
      jobs.push_back({job, 0, 0, 1, 0, static_cast<int32_t>(scores.size())});
      scores.insert(scores.end(), values.begin(), values.end());
    }
    SCOPED_TRACE(::testing::Message() << "max_pages " << max_pages);
    ExpectSameSelections(Select(**cpu, scores, jobs, kv_len, page_size, max_pages),
                         Select(**gpu, scores, jobs, kv_len, page_size, max_pages), max_pages);
  }
}

TEST_F(PageSelectTest, ScoresAreBitwiseTheCpuScoresAndSelectionsMatch) {
  // Head dim 128 at every page size, 64 at two.
  const std::pair<int, int> shapes[] = {{128, 16},  {128, 32}, {128, 64},
                                        {128, 128}, {64, 32},  {64, 64}};
  for (const auto& [head_dim, page_size] : shapes) {
    SCOPED_TRACE(::testing::Message() << "head_dim " << head_dim << " page " << page_size);
    KvStoreConfig store;
    store.num_layers = 1;
    store.num_kv_heads = 2;
    store.head_dim = head_dim;
    store.page_size = page_size;
    store.logical_page_size = 16;
    store.num_dense_pages = 50000 / page_size + 64;
    SparseAttentionConfig attention;
    attention.page_size = page_size;
    attention.streaming_heads = false;
    attention.page_selection = false;
    auto twin = KvTwin::Create(store, attention, 8, 5);
    ASSERT_NE(twin, nullptr);
    const std::vector<int64_t> lengths = {1, 77, 4096, 15000, 30001};
    for (size_t s = 0; s < lengths.size(); ++s) {
      for (int64_t done = 0; done < lengths[s] - 1;) {
        const int64_t n = std::min<int64_t>(2048, lengths[s] - 1 - done);
        ASSERT_TRUE(twin->Step({{static_cast<SeqId>(s), n, false}}, false, nullptr, nullptr).ok());
        done += n;
      }
    }
    std::vector<TwinChunk> decode;
    for (size_t s = 0; s < lengths.size(); ++s) decode.push_back({static_cast<SeqId>(s), 1, true});
    std::vector<float> cpu_out, gpu_out;
    ASSERT_TRUE(twin->Step(decode, true, &cpu_out, &gpu_out).ok());
    // Jobs per query head and per KV head (a group of four) for every sequence; the GPU
    // scores consecutive jobs over the same statistics together.
    std::vector<PageScoreJob> jobs;
    std::vector<int32_t> kv_len;
    int32_t total = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      kv_len.push_back(static_cast<int32_t>(lengths[s]));
      const int32_t pages = static_cast<int32_t>((lengths[s] + page_size - 1) / page_size);
      for (int kv_head = 0; kv_head < 2; ++kv_head) {
        for (int h = 4 * kv_head; h < 4 * kv_head + 4; ++h) {
          jobs.push_back({static_cast<int32_t>(s), kv_head, h, 1, static_cast<int32_t>(s), total});
          total += pages;
        }
        jobs.push_back(
            {static_cast<int32_t>(s), kv_head, 4 * kv_head, 4, static_cast<int32_t>(s), total});
        total += pages;
        // Eight heads against one KV head's statistics: a block of its own.
        jobs.push_back({static_cast<int32_t>(s), kv_head, 0, 8, static_cast<int32_t>(s), total});
        total += pages;
      }
    }
    // The CPU, then the GPU with one and with two staged tiles per block.
    std::vector<float> cpu_scores(total), gpu_scores;
    for (const char* stages : {"", "1", "2"}) {
      SCOPED_TRACE(::testing::Message() << "LSERVE_SCORE_STAGES=" << stages);
      auto* side = *stages == '\0' ? &twin->cpu() : &twin->gpu();
      setenv("LSERVE_SCORE_STAGES", stages, 1);
      MemorySpace* memory = side->backend->memory();
      const bool host = memory->host_accessible();
      auto jobs_d = Upload(memory, jobs);
      auto scores_d = Buffer::Allocate(memory, total * sizeof(float));
      ASSERT_TRUE(jobs_d.ok() && scores_d.ok());
      ScorePagesParams p;
      p.kv = side->attention->LayerView(0);
      p.tables = side->plan.tables();
      p.q = host ? static_cast<const void*>(twin->queries().data()) : twin->gpu_queries();
      p.q_row_stride = 8 * head_dim;
      p.jobs = host ? jobs.data() : jobs_d->as<PageScoreJob>();
      p.num_jobs = static_cast<int>(jobs.size());
      p.scores = host ? cpu_scores.data() : scores_d->as<float>();
      ASSERT_TRUE(side->backend->ScorePages(p).ok());
      ASSERT_TRUE(side->backend->Synchronize().ok());
      unsetenv("LSERVE_SCORE_STAGES");
      if (host) continue;
      gpu_scores = Download<float>(memory, *scores_d, total);
      for (int32_t i = 0; i < total; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(cpu_scores[i]), std::bit_cast<uint32_t>(gpu_scores[i]))
            << "score " << i << ": cpu " << cpu_scores[i] << " gpu " << gpu_scores[i];
      }
    }
    ExpectSameSelections(Select(*twin->cpu().backend, cpu_scores, jobs, kv_len, page_size, 16),
                         Select(*twin->gpu().backend, gpu_scores, jobs, kv_len, page_size, 16), 16);
  }
}

}  // namespace
}  // namespace lserve::cuda
