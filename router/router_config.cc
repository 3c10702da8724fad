#include "router/router_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "net/text_config.h"

namespace lserve {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("router config: ", field, " ", why));
}

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000)));
}

bool Finite(double value, double low, double high) {
  return std::isfinite(value) && value >= low && value <= high;
}

}  // namespace

void ApplyRouterDefaults(v1::RouterConfig* c) {
  if (c->listen_address().empty()) c->set_listen_address("127.0.0.1:50050");
  if (c->prefill_policy() == v1::ROUTING_POLICY_UNSPECIFIED) {
    c->set_prefill_policy(v1::ROUTING_POLICY_LEAST_LOADED);
  }
  if (c->decode_policy() == v1::ROUTING_POLICY_UNSPECIFIED) {
    c->set_decode_policy(v1::ROUTING_POLICY_LEAST_LOADED);
  }
  if (c->disaggregation_min_prompt_tokens() == 0) c->set_disaggregation_min_prompt_tokens(256);
  if (c->prefix_pages() == 0) c->set_prefix_pages(4);
  if (c->prefix_page_tokens() == 0) c->set_prefix_page_tokens(16);
  if (c->health_interval_s() == 0) c->set_health_interval_s(1.0);
  if (c->heartbeat_timeout_s() == 0) c->set_heartbeat_timeout_s(5.0);
  if (c->breaker_failures() == 0) c->set_breaker_failures(3);
  if (c->breaker_cooldown_s() == 0) c->set_breaker_cooldown_s(5.0);
  if (c->max_attempts() == 0) c->set_max_attempts(3);
  if (c->retry_backoff_s() == 0) c->set_retry_backoff_s(0.05);
  if (c->max_in_flight() == 0) c->set_max_in_flight(256);
  if (!c->has_max_queue()) c->set_max_queue(1024);  // 0 is meaningful: no queue
  if (c->max_message_bytes() == 0) c->set_max_message_bytes(int64_t{64} << 20);
  if (c->kv_lease_ms() == 0) c->set_kv_lease_ms(30000);
}

absl::StatusOr<v1::RouterConfig> ParseRouterConfig(const std::string& text,
                                                   const std::string& source) {
  return net::ParseTextConfig<v1::RouterConfig>(text, source);
}

absl::Status ValidateRouterConfig(const v1::RouterConfig& c) {
  for (const v1::WorkerEndpoint& worker : c.workers()) {
    if (worker.address().find(':') == std::string::npos) {
      return Invalid("workers", absl::StrCat("address '", worker.address(), "' is not host:port"));
    }
  }
  if (c.disaggregation_min_prompt_tokens() < 1) {
    return Invalid("disaggregation_min_prompt_tokens", "must be >= 1");
  }
  if (c.prefix_pages() < 1 || c.prefix_pages() > 4096) {
    return Invalid("prefix_pages", "must be in [1, 4096]");
  }
  if (c.prefix_page_tokens() < 1 || c.prefix_page_tokens() > 65536) {
    return Invalid("prefix_page_tokens", "must be in [1, 65536]");
  }
  if (!Finite(c.health_interval_s(), 0.01, 3600)) {
    return Invalid("health_interval_s", "must be in [0.01, 3600]");
  }
  if (!Finite(c.heartbeat_timeout_s(), c.health_interval_s(), 86400)) {
    return Invalid("heartbeat_timeout_s", "must be in [health_interval_s, 86400]");
  }
  if (c.breaker_failures() < 1) return Invalid("breaker_failures", "must be >= 1");
  if (!Finite(c.breaker_cooldown_s(), 0.001, 3600)) {
    return Invalid("breaker_cooldown_s", "must be in [0.001, 3600]");
  }
  if (c.max_attempts() < 1 || c.max_attempts() > 10) {
    return Invalid("max_attempts", "must be in [1, 10]");
  }
  if (!Finite(c.retry_backoff_s(), 0, 60)) return Invalid("retry_backoff_s", "must be in [0, 60]");
  if (c.max_in_flight() < 1 || c.max_queue() < 0) {
    return Invalid("max_in_flight", "must be >= 1 (and max_queue >= 0)");
  }
  if (c.max_prompt_tokens() < 0 || c.max_tokens() < 0) {
    return Invalid("max_prompt_tokens", "and max_tokens must be >= 0 (0: no limit)");
  }
  if (c.max_message_bytes() < 4096 || c.max_message_bytes() > (int64_t{1} << 31) - 1) {
    return Invalid("max_message_bytes", "must be in [4096, 2^31)");
  }
  if (c.kv_lease_ms() > 3600 * 1000) return Invalid("kv_lease_ms", "must be at most an hour");
  if (c.tls().cert_file().empty() != c.tls().key_file().empty()) {
    return Invalid("tls", "needs both cert_file and key_file");
  }
  if (c.worker_tls().cert_file().empty() != c.worker_tls().key_file().empty()) {
    return Invalid("worker_tls", "needs both cert_file and key_file");
  }
  return absl::OkStatus();
}

RegistryOptions RegistryOptionsFor(const v1::RouterConfig& c) {
  RegistryOptions options;
  options.health_interval = Millis(c.health_interval_s());
  options.heartbeat_timeout = Millis(c.heartbeat_timeout_s());
  options.breaker_failures = c.breaker_failures();
  options.breaker_cooldown = Millis(c.breaker_cooldown_s());
  return options;
}

RouterOptions RouterOptionsFor(const v1::RouterConfig& c) {
  RouterOptions options;
  options.disaggregation_min_prompt_tokens = c.disaggregation_min_prompt_tokens();
  options.max_attempts = c.max_attempts();
  options.retry_backoff = Millis(c.retry_backoff_s());
  options.max_prompt_tokens = c.max_prompt_tokens();
  options.max_tokens = c.max_tokens();
  options.kv_lease = std::chrono::milliseconds(c.kv_lease_ms());
  options.max_in_flight = c.max_in_flight();
  options.max_queue = c.max_queue();
  return options;
}

}  // namespace lserve
