// Drives a PagedKvCache like the engine does (chunked prefill, then decode appends) with
// random keys and values, keeping a contiguous copy of everything written so tests can
// check the cache against an independent picture of each sequence.
#ifndef LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_
#define LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_

#include <map>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/paged_kv_cache.h"

namespace lserve::testing {

class KvDriver {
 public:
  explicit KvDriver(KvCacheConfig config, uint32_t seed = 1) : rng_(seed) {
    auto cache = PagedKvCache::Create(std::move(config));
    EXPECT_TRUE(cache.ok()) << cache.status();
    cache_ = *std::move(cache);
  }

  PagedKvCache& cache() { return *cache_; }
  int width() const { return cache_->config().num_kv_heads * cache_->config().head_dim; }

  // Appends n tokens to seq in every layer (a prefill chunk, or one decode token).
  void Append(SeqId seq, int64_t n, bool decode) {
    if (!cache_->HasSequence(seq)) {
      ASSERT_TRUE(cache_->AddSequence(seq).ok());
    }
    const int64_t start = *cache_->Length(seq);
    ASSERT_TRUE(cache_->Extend(seq, n, decode).ok()) << "seq " << seq << " +" << n;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int layer = 0; layer < cache_->config().num_layers; ++layer) {
      std::vector<float> k(n * width()), v(n * width());
      for (float& x : k) x = normal(rng_);
      for (float& x : v) x = normal(rng_);
      cache_->Write(layer, seq, start, n, k.data(), v.data(), width());
      auto& keys = keys_[{seq, layer}];
      auto& values = values_[{seq, layer}];
      keys.insert(keys.end(), k.begin(), k.end());
      values.insert(values.end(), v.begin(), v.end());
    }
    ASSERT_TRUE(cache_->Commit(seq, n).ok());
  }

  // Prefills `length` tokens in random chunks of at most max_chunk.
  void Prefill(SeqId seq, int64_t length, int64_t max_chunk) {
    std::uniform_int_distribution<int64_t> chunk(1, max_chunk);
    for (int64_t done = 0; done < length;) {
      const int64_t n = std::min(length - done, chunk(rng_));
      Append(seq, n, false);
      done += n;
    }
  }

  // The key written for (seq, layer, pos, kv_head): head_dim floats.
  const float* Key(SeqId seq, int layer, int64_t pos, int kv_head) const {
    return keys_.at({seq, layer}).data() + pos * width() +
           int64_t{kv_head} * cache_->config().head_dim;
  }
  const float* Value(SeqId seq, int layer, int64_t pos, int kv_head) const {
    return values_.at({seq, layer}).data() + pos * width() +
           int64_t{kv_head} * cache_->config().head_dim;
  }

  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
  std::unique_ptr<PagedKvCache> cache_;
  std::map<std::pair<SeqId, int>, std::vector<float>> keys_, values_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_
