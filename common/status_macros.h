// Early-return helpers for absl::Status / absl::StatusOr.
#ifndef LSERVE_COMMON_STATUS_MACROS_H_
#define LSERVE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LSERVE_CONCAT_INNER_(a, b) a##b
#define LSERVE_CONCAT_(a, b) LSERVE_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    const absl::Status lserve_status_ = (expr);      \
    if (!lserve_status_.ok()) return lserve_status_; \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(LSERVE_CONCAT_(lserve_statusor_, __LINE__), lhs, rexpr)

#endif  // LSERVE_COMMON_STATUS_MACROS_H_
