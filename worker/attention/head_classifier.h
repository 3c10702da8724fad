// Static sparsity: which KV heads stream (DESIGN.md §3, head types). Gates come from a
// DuoAttention `full_attention_heads.tsv` (one row per layer, one float per KV head; near
// 1 means retrieval); the global quantile at the streaming ratio splits them.
#ifndef LSERVE_WORKER_ATTENTION_HEAD_CLASSIFIER_H_
#define LSERVE_WORKER_ATTENTION_HEAD_CLASSIFIER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kvstore/head_layout.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/gate_table.h"

namespace lserve {

// Clips gates to [0, 1] and makes the round(s * N) lowest-gated heads of all N heads
// streaming: the global quantile at s. Equal gates are ordered by (layer, head), so the
// split is deterministic.
HeadLayout ClassifyHeads(const GateTable& gates, float streaming_ratio);

// Without a gate file: round(s * num_kv_heads) heads of each layer stream, chosen by a
// seeded shuffle.
HeadLayout SeededHeadLayout(int num_layers, int num_kv_heads, float streaming_ratio, uint64_t seed);

// The layout an attention config asks for: every head dense when streaming heads are off
// or the ratio is 0, else the gate file's split, else the seeded choice.
absl::StatusOr<HeadLayout> HeadLayoutFor(const SparseAttentionConfig& config, int num_layers,
                                         int num_kv_heads);

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_HEAD_CLASSIFIER_H_
