// DuoAttention gate files (`full_attention_heads.tsv`): one row per layer, one
// tab-separated float per KV head; values near 1 mean a retrieval (dense) head.
#ifndef LSERVE_WORKER_ATTENTION_GATE_TABLE_H_
#define LSERVE_WORKER_ATTENTION_GATE_TABLE_H_

#include <filesystem>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lserve {

using GateTable = std::vector<std::vector<float>>;  // [layer][kv_head]

// Parses gate text; `source` names the file in errors. Rows must equal num_layers and
// every row must hold num_kv_heads finite numbers.
absl::StatusOr<GateTable> ParseGateTable(absl::string_view text, absl::string_view source,
                                         int num_layers, int num_kv_heads);
absl::StatusOr<GateTable> ReadGateFile(const std::filesystem::path& path, int num_layers,
                                       int num_kv_heads);

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_GATE_TABLE_H_
