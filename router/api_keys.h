// API keys for the router's public port: "authorization: Bearer <key>" metadata, checked
// in constant time against keys from a file (one per line, '#' comments) and an
// environment variable (comma-separated). No keys configured: no authentication.
#ifndef LSERVE_ROUTER_API_KEYS_H_
#define LSERVE_ROUTER_API_KEYS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve {

class ApiKeys {
 public:
  static absl::StatusOr<ApiKeys> Load(const std::string& file, const std::string& env_var);
  static ApiKeys FromList(std::vector<std::string> keys);

  bool enabled() const { return !keys_.empty(); }
  // OK, or UNAUTHENTICATED for a missing, malformed or unknown key. Takes the same time
  // for every key of a given length, whichever matched.
  absl::Status Check(std::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_API_KEYS_H_
