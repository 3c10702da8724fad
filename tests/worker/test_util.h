// Helpers shared by the engine tests: reading JSON fixtures and comparing logits.
#ifndef LSERVE_TESTS_WORKER_TEST_UTIL_H_
#define LSERVE_TESTS_WORKER_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <fstream>
#include <span>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"

namespace lserve::testing {

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// max |a - b| / max |b|: the relative error the parity tests bound.
inline double RelativeMaxError(std::span<const float> a, std::span<const float> b) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(double{a[i]} - double{b[i]}));
    max_ref = std::max(max_ref, std::abs(double{b[i]}));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_TEST_UTIL_H_
