// Generation requests and results for the service tests: deterministic prompts by salt.
#ifndef LSERVE_TESTS_TESTING_REQUESTS_H_
#define LSERVE_TESTS_TESTING_REQUESTS_H_

#include <vector>

#include "client/client.h"
#include "lserve/v1/generation.pb.h"

namespace lserve::testing {

inline v1::GenerateRequest Request(int prompt_tokens, int salt, int max_tokens,
                                   float temperature = 0.0f) {
  v1::GenerateRequest request;
  for (int i = 0; i < prompt_tokens; ++i) {
    request.add_prompt_token_ids((i * 37 + salt * 11 + 5) % 500 + 3);
  }
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(temperature);
  request.mutable_sampling()->set_seed(100 + salt);
  return request;
}

inline std::vector<int32_t> Ids(const GenerateResult& result) {
  std::vector<int32_t> ids;
  for (const auto& token : result.tokens) ids.push_back(token.token_id());
  return ids;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_TESTING_REQUESTS_H_
