#include "worker/attention/attention_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lserve {
namespace {

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("attention config: ", message));
}

}  // namespace

absl::Status ValidateSparseAttentionConfig(const SparseAttentionConfig& c) {
  if (!std::isfinite(c.streaming_ratio) || c.streaming_ratio < 0.0f || c.streaming_ratio > 1.0f) {
    return Invalid(absl::StrCat("streaming_ratio must be in [0, 1], got ", c.streaming_ratio));
  }
  for (int size : {16, 32, 64, 128}) {
    if (c.page_size == size) break;
    if (size == 128) {
      return Invalid(absl::StrCat("page_size must be 16, 32, 64 or 128, got ", c.page_size));
    }
  }
  if (c.logical_page_size <= 0 || c.page_size % c.logical_page_size != 0) {
    return Invalid(absl::StrCat("logical_page_size (", c.logical_page_size,
                                ") must divide page_size (", c.page_size, ")"));
  }
  if (c.sink < 0) return Invalid(absl::StrCat("sink must be >= 0, got ", c.sink));
  if (c.prefill_local <= 0 || c.decode_local <= 0) {
    return Invalid("local windows must be positive");
  }
  if (c.decode_local > c.prefill_local) {
    return Invalid(absl::StrCat("decode_local (", c.decode_local, ") exceeds prefill_local (",
                                c.prefill_local, ")"));
  }
  if (c.token_budget < c.page_size) {
    return Invalid(absl::StrCat("token_budget (", c.token_budget,
                                ") must hold at least one page of ", c.page_size, " tokens"));
  }
  if (c.reuse_interval <= 0) {
    return Invalid(absl::StrCat("reuse_interval must be >= 1, got ", c.reuse_interval));
  }
  return absl::OkStatus();
}

absl::Status ParsePageScoring(const std::string& text, PageScoring* scoring) {
  if (text == "query_head") {
    *scoring = PageScoring::kPerQueryHead;
  } else if (text == "kv_head") {
    *scoring = PageScoring::kPerKvHead;
  } else {
    return Invalid(absl::StrCat("page scoring must be query_head or kv_head, got '", text, "'"));
  }
  return absl::OkStatus();
}

const char* PageScoringName(PageScoring scoring) {
  return scoring == PageScoring::kPerQueryHead ? "query_head" : "kv_head";
}

}  // namespace lserve
