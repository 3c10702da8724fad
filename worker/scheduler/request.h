// A generation request as the scheduler takes it, and the events it gives back.
#ifndef LSERVE_WORKER_SCHEDULER_REQUEST_H_
#define LSERVE_WORKER_SCHEDULER_REQUEST_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace lserve {

using RequestId = int64_t;
class KvStreamOut;  // kv_stream_out.h
using SteadyClock = std::chrono::steady_clock;

struct SamplingParams {
  float temperature = 0.0f;  // 0 selects greedy decoding
  int top_k = 0;             // 0 keeps every token
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
  int max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  int logprobs = -1;  // -1: none; n >= 0: each token's logprob plus the n most likely
  // Draws made before this request (it resumes one that generated that many elsewhere),
  // so the seeded random stream continues where it stopped.
  uint64_t draw_offset = 0;
};

// Hard limit on SamplingParams::logprobs.
inline constexpr int kMaxTopLogprobs = 20;

absl::Status ValidateSamplingParams(const SamplingParams& params, int vocab_size);

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int priority = 0;  // higher runs first and is preempted last
  std::optional<SteadyClock::time_point> deadline;
  std::string client_request_id;
  // Prefill-only hand-off: when the request finishes, its KV stays on the engine under a
  // lease (the request id is its handle) instead of being freed.
  bool keep_kv = false;
  std::chrono::milliseconds kv_lease{30000};
  // With keep_kv: told when the last prompt chunk runs, to send the KV meanwhile.
  std::shared_ptr<KvStreamOut> stream_kv;
};

enum class FinishReason { kNone, kStop, kLength, kAborted, kDeadline, kError };
const char* FinishReasonName(FinishReason reason);

struct GeneratedToken {
  int32_t id = 0;
  float logprob = 0.0f;                                 // when logprobs >= 0
  std::vector<std::pair<int32_t, float>> top_logprobs;  // best first
};

struct RequestTimings {
  double queue_s = 0.0;                // arrival to first scheduled step
  double time_to_first_token_s = 0.0;  // arrival to the first token
  double total_s = 0.0;                // arrival to finish
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // served by the prefix cache
  int64_t prefill_tokens = 0;        // computed in prefill steps (recomputation included)
  int64_t generated_tokens = 0;
  int preemptions = 0;
};

// What one Step reports for a request: tokens sampled in the step, and the outcome once it
// is finished. A finished request reports exactly once.
struct RequestEvent {
  RequestId id = 0;
  std::vector<GeneratedToken> tokens;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;  // CANCELLED, DEADLINE_EXCEEDED or the engine's error when not OK
  RequestTimings timings;
  bool kv_leased = false;  // finished with keep_kv: its KV waits under the request id
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_REQUEST_H_
