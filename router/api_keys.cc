#include "router/api_keys.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lserve {
namespace {

// Equal strings, comparing every byte of `key` whatever `presented` holds.
bool ConstantTimeEquals(std::string_view presented, std::string_view key) {
  unsigned char diff = presented.size() == key.size() ? 0 : 1;
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff |= p ^ static_cast<unsigned char>(key[i]);
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& file, const std::string& env_var) {
  std::vector<std::string> keys;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read API keys file ", file));
    std::string line;
    while (std::getline(in, line)) {
      const absl::string_view key = absl::StripAsciiWhitespace(line);
      if (!key.empty() && key[0] != '#') keys.emplace_back(key);
    }
    if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat(file, " holds no API key"));
  }
  if (!env_var.empty()) {
    const char* value = std::getenv(env_var.c_str());
    if (value == nullptr) {
      return absl::NotFoundError(absl::StrCat("API keys variable ", env_var, " is not set"));
    }
    for (absl::string_view key : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      keys.emplace_back(absl::StripAsciiWhitespace(key));
    }
  }
  return FromList(std::move(keys));
}

ApiKeys ApiKeys::FromList(std::vector<std::string> keys) {
  ApiKeys api_keys;
  api_keys.keys_ = std::move(keys);
  return api_keys;
}

absl::Status ApiKeys::Check(std::string_view authorization) const {
  if (keys_.empty()) return absl::OkStatus();
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.substr(0, kBearer.size()) != kBearer) {
    return absl::UnauthenticatedError("missing API key: send 'authorization: Bearer <key>'");
  }
  const std::string_view presented = authorization.substr(kBearer.size());
  bool match = false;
  for (const std::string& key : keys_) match |= ConstantTimeEquals(presented, key);
  if (!match) return absl::UnauthenticatedError("unknown API key");
  return absl::OkStatus();
}

}  // namespace lserve
