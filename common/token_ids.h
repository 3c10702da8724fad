// Comma-separated token ids as the command-line tools take them ("1,403,407").
#ifndef LSERVE_COMMON_TOKEN_IDS_H_
#define LSERVE_COMMON_TOKEN_IDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lserve {

// `flag` names the source in errors ("--prompt_ids: 'x' is not a token id").
inline absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& text,
                                                          const char* flag) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", std::string(part), "' is not a token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

}  // namespace lserve

#endif  // LSERVE_COMMON_TOKEN_IDS_H_
