// The lserve-router's one config message (lserve.v1.RouterConfig): defaults, validation,
// and the options of the registry and the request handler it implies.
#ifndef LSERVE_ROUTER_ROUTER_CONFIG_H_
#define LSERVE_ROUTER_ROUTER_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "lserve/v1/config.pb.h"
#include "router/router_handler.h"
#include "router/worker_registry.h"

namespace lserve {

// Fills unset fields: listen 127.0.0.1:50050, least-loaded policies, disaggregation from
// 256 prompt tokens, health checks every second, 3 attempts, ...
void ApplyRouterDefaults(v1::RouterConfig* config);

absl::StatusOr<v1::RouterConfig> ParseRouterConfig(const std::string& text,
                                                   const std::string& source);

// Every field in range; INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateRouterConfig(const v1::RouterConfig& config);

RegistryOptions RegistryOptionsFor(const v1::RouterConfig& config);
RouterOptions RouterOptionsFor(const v1::RouterConfig& config);

}  // namespace lserve

#endif  // LSERVE_ROUTER_ROUTER_CONFIG_H_
