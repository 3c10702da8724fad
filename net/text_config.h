// Reads a config message (WorkerConfig, RouterConfig) from protobuf text format, with
// errors that name the source and the line.
#ifndef LSERVE_NET_TEXT_CONFIG_H_
#define LSERVE_NET_TEXT_CONFIG_H_

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace lserve::net {

// Keeps the parser's first error with its position.
class FirstParseError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat(line + 1, ":", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

template <typename Config>
absl::StatusOr<Config> ParseTextConfig(const std::string& text, const std::string& source) {
  Config config;
  google::protobuf::TextFormat::Parser parser;
  FirstParseError errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ":", errors.first()));
  }
  return config;
}

}  // namespace lserve::net

#endif  // LSERVE_NET_TEXT_CONFIG_H_
