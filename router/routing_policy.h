// How the router picks a worker from a pool's candidates: one small class per policy
// behind one interface (DESIGN.md §4).
#ifndef LSERVE_ROUTER_ROUTING_POLICY_H_
#define LSERVE_ROUTER_ROUTING_POLICY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "lserve/v1/config.pb.h"
#include "router/worker_registry.h"

namespace lserve {

struct RouteContext {
  std::span<const int32_t> prompt;
};

class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  virtual std::string_view name() const = 0;
  // One of `candidates` (non-empty).
  virtual std::shared_ptr<WorkerState> Pick(
      const std::vector<std::shared_ptr<WorkerState>>& candidates, const RouteContext& context) = 0;
};

// Each candidate in turn.
class RoundRobinPolicy final : public RoutingPolicy {
 public:
  std::string_view name() const override { return "round_robin"; }
  std::shared_ptr<WorkerState> Pick(const std::vector<std::shared_ptr<WorkerState>>& candidates,
                                    const RouteContext& context) override;

 private:
  std::atomic<uint64_t> next_{0};
};

// Power of two choices: the less loaded of two random candidates, by reported running and
// waiting requests plus the router's own requests in flight, then by KV usage.
class LeastLoadedPolicy final : public RoutingPolicy {
 public:
  explicit LeastLoadedPolicy(uint64_t seed = 1) : rng_(seed) {}
  std::string_view name() const override { return "least_loaded"; }
  std::shared_ptr<WorkerState> Pick(const std::vector<std::shared_ptr<WorkerState>>& candidates,
                                    const RouteContext& context) override;
  static double Score(const WorkerState& worker);

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
};

// The worker likely to hold the prompt's leading pages in its prefix cache: rendezvous
// hashing of the first `pages` pages of `page_tokens` tokens, so repeated prefixes land on
// one worker while workers come and go. Prompts shorter than a page go least loaded.
class PrefixAwarePolicy final : public RoutingPolicy {
 public:
  PrefixAwarePolicy(int pages, int page_tokens) : pages_(pages), page_tokens_(page_tokens) {}
  std::string_view name() const override { return "prefix_aware"; }
  std::shared_ptr<WorkerState> Pick(const std::vector<std::shared_ptr<WorkerState>>& candidates,
                                    const RouteContext& context) override;

 private:
  int pages_;
  int page_tokens_;
  LeastLoadedPolicy fallback_;
};

std::unique_ptr<RoutingPolicy> MakeRoutingPolicy(v1::RoutingPolicy policy, int prefix_pages,
                                                 int prefix_page_tokens);

}  // namespace lserve

#endif  // LSERVE_ROUTER_ROUTING_POLICY_H_
