// Feeds arbitrary text to the gate TSV parser. The first two bytes pick the model shape
// (layers, KV heads) so that well-formed tables can be accepted; the rest is the file.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "worker/attention/gate_table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int num_layers = data[0];
  const int num_kv_heads = data[1];
  const absl::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);
  absl::StatusOr<lserve::GateTable> gates =
      lserve::ParseGateTable(text, "gates.tsv", num_layers, num_kv_heads);
  if (!gates.ok()) return 0;
  // An accepted table is exactly the shape asked for and holds only finite gates.
  if (static_cast<int>(gates->size()) != num_layers) __builtin_trap();
  for (const std::vector<float>& row : *gates) {
    if (static_cast<int>(row.size()) != num_kv_heads) __builtin_trap();
    for (float gate : row) {
      if (!std::isfinite(gate)) __builtin_trap();
    }
  }
  return 0;
}
