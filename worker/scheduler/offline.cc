#include "worker/scheduler/offline.h"

#include <unordered_map>

namespace lserve {

std::vector<GenerationResult> Generate(Engine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const SchedulerOptions& options,
                                       const TokenCallback& on_token) {
  std::vector<GenerationResult> results(requests.size());
  SchedulerOptions sized = options;
  sized.max_waiting = std::max<int>(options.max_waiting, static_cast<int>(requests.size()));
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(&engine, sized);
  if (!scheduler.ok()) {
    for (GenerationResult& result : results) result.status = scheduler.status();
    return results;
  }
  std::unordered_map<RequestId, size_t> index;
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<RequestId> id = (*scheduler)->Submit(requests[i]);
    if (!id.ok()) {
      results[i].status = id.status();
      continue;
    }
    index[*id] = i;
  }
  while ((*scheduler)->HasWork()) {
    for (RequestEvent& event : (*scheduler)->Step()) {
      const size_t i = index.at(event.id);
      GenerationResult& result = results[i];
      for (GeneratedToken& token : event.tokens) {
        result.tokens.push_back(token.id);
        if (on_token) on_token(i, token.id);
        result.details.push_back(std::move(token));
      }
      if (event.finished) {
        result.status = event.status;
        result.finish_reason = event.finish_reason;
        result.timings = event.timings;
      }
    }
  }
  return results;
}

}  // namespace lserve
