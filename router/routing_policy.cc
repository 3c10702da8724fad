#include "router/routing_policy.h"

#include <algorithm>

namespace lserve {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

uint64_t HashString(std::string_view text, uint64_t seed) {
  uint64_t h = Mix(seed);
  for (char c : text) h = Mix(h ^ static_cast<uint8_t>(c));
  return h;
}

}  // namespace

std::shared_ptr<WorkerState> RoundRobinPolicy::Pick(
    const std::vector<std::shared_ptr<WorkerState>>& candidates, const RouteContext&) {
  return candidates[next_.fetch_add(1) % candidates.size()];
}

double LeastLoadedPolicy::Score(const WorkerState& worker) {
  // Reported load lags by up to a health interval; the router's own in-flight count does
  // not, so both count.
  const v1::Load load = worker.load();
  return load.running() + load.waiting() + worker.in_flight.load() + load.kv_cache_usage_ratio();
}

std::shared_ptr<WorkerState> LeastLoadedPolicy::Pick(
    const std::vector<std::shared_ptr<WorkerState>>& candidates, const RouteContext&) {
  if (candidates.size() == 1) return candidates[0];
  size_t a, b;
  {
    std::lock_guard<std::mutex> lock(mu_);
    a = rng_() % candidates.size();
    b = rng_() % (candidates.size() - 1);
  }
  if (b >= a) ++b;
  return Score(*candidates[b]) < Score(*candidates[a]) ? candidates[b] : candidates[a];
}

std::shared_ptr<WorkerState> PrefixAwarePolicy::Pick(
    const std::vector<std::shared_ptr<WorkerState>>& candidates, const RouteContext& context) {
  const int64_t full_pages = static_cast<int64_t>(context.prompt.size()) / page_tokens_;
  if (full_pages == 0) return fallback_.Pick(candidates, context);
  const int64_t tokens = std::min<int64_t>(full_pages, pages_) * page_tokens_;
  uint64_t key = 0x6c7365727665ull;
  for (int64_t i = 0; i < tokens; ++i) key = Mix(key ^ static_cast<uint32_t>(context.prompt[i]));
  std::shared_ptr<WorkerState> best;
  uint64_t best_weight = 0;
  for (const auto& worker : candidates) {
    const uint64_t weight = HashString(worker->address, key);
    if (best == nullptr || weight > best_weight) {
      best = worker;
      best_weight = weight;
    }
  }
  return best;
}

std::unique_ptr<RoutingPolicy> MakeRoutingPolicy(v1::RoutingPolicy policy, int prefix_pages,
                                                 int prefix_page_tokens) {
  switch (policy) {
    case v1::ROUTING_POLICY_ROUND_ROBIN:
      return std::make_unique<RoundRobinPolicy>();
    case v1::ROUTING_POLICY_PREFIX_AWARE:
      return std::make_unique<PrefixAwarePolicy>(prefix_pages, prefix_page_tokens);
    default:
      return std::make_unique<LeastLoadedPolicy>();
  }
}

}  // namespace lserve
