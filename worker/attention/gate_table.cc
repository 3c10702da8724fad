#include "worker/attention/gate_table.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lserve {

absl::StatusOr<GateTable> ParseGateTable(absl::string_view text, absl::string_view source,
                                         int num_layers, int num_kv_heads) {
  GateTable gates;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<float> row;
    for (absl::string_view cell : absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty())) {
      float gate;
      if (!absl::SimpleAtof(cell, &gate) || !std::isfinite(gate)) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ":", line_number, ": '", std::string(cell), "' is not a finite number"));
      }
      row.push_back(gate);
    }
    if (static_cast<int>(row.size()) != num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", line_number, ": ", row.size(),
                                                     " gates, the model has ", num_kv_heads,
                                                     " KV heads per layer"));
    }
    gates.push_back(std::move(row));
  }
  if (static_cast<int>(gates.size()) != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", gates.size(), " rows, the model has ", num_layers, " layers"));
  }
  return gates;
}

absl::StatusOr<GateTable> ReadGateFile(const std::filesystem::path& path, int num_layers,
                                       int num_kv_heads) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read gate file ", path.string()));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseGateTable(text.str(), path.string(), num_layers, num_kv_heads);
}

}  // namespace lserve
