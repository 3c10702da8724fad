// Minimal logging and CHECK for programmer invariants (never for request data).
#ifndef LSERVE_COMMON_LOGGING_H_
#define LSERVE_COMMON_LOGGING_H_

#include <cstdlib>
#include <iostream>
#include <sstream>

namespace lserve {

enum class LogSeverity { kInfo, kWarning, kError, kFatal };

class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line) : severity_(severity) {
    static constexpr const char* kTags[] = {"I", "W", "E", "F"};
    stream_ << kTags[static_cast<int>(severity)] << " " << file << ":" << line << "] ";
  }
  ~LogMessage() {
    stream_ << "\n";
    std::cerr << stream_.str();
    if (severity_ == LogSeverity::kFatal) std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

}  // namespace lserve

#define LOG(severity) \
  ::lserve::LogMessage(::lserve::LogSeverity::k##severity, __FILE__, __LINE__).stream()

#define CHECK(condition) \
  if (!(condition)) LOG(Fatal) << "Check failed: " #condition " "

#define CHECK_OP_(a, b, op) CHECK((a)op(b)) << "(" << (a) << " vs " << (b) << ") "
#define CHECK_EQ(a, b) CHECK_OP_(a, b, ==)
#define CHECK_NE(a, b) CHECK_OP_(a, b, !=)
#define CHECK_LE(a, b) CHECK_OP_(a, b, <=)
#define CHECK_LT(a, b) CHECK_OP_(a, b, <)
#define CHECK_GE(a, b) CHECK_OP_(a, b, >=)
#define CHECK_GT(a, b) CHECK_OP_(a, b, >)

#endif  // LSERVE_COMMON_LOGGING_H_
