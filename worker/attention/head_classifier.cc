#include "worker/attention/head_classifier.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>

namespace lserve {

HeadLayout ClassifyHeads(const GateTable& gates, float streaming_ratio) {
  std::vector<std::tuple<float, int, int>> order;  // (clipped gate, layer, head)
  for (int layer = 0; layer < static_cast<int>(gates.size()); ++layer) {
    for (int head = 0; head < static_cast<int>(gates[layer].size()); ++head) {
      order.emplace_back(std::clamp(gates[layer][head], 0.0f, 1.0f), layer, head);
    }
  }
  std::sort(order.begin(), order.end());
  const size_t num_streaming =
      static_cast<size_t>(std::lround(streaming_ratio * static_cast<double>(order.size())));
  std::vector<std::vector<bool>> streaming;
  for (const auto& row : gates) streaming.emplace_back(row.size(), false);
  for (size_t i = 0; i < num_streaming && i < order.size(); ++i) {
    streaming[std::get<1>(order[i])][std::get<2>(order[i])] = true;
  }
  return HeadLayout::FromStreamingMask(streaming);
}

HeadLayout SeededHeadLayout(int num_layers, int num_kv_heads, float streaming_ratio,
                            uint64_t seed) {
  const int per_layer = static_cast<int>(std::lround(streaming_ratio * num_kv_heads));
  std::vector<std::vector<bool>> streaming;
  uint64_t state = seed;
  auto next = [&state]() {  // splitmix64: the same layout on every standard library
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (int layer = 0; layer < num_layers; ++layer) {
    std::vector<int> heads(num_kv_heads);
    std::iota(heads.begin(), heads.end(), 0);
    for (int i = num_kv_heads - 1; i > 0; --i) std::swap(heads[i], heads[next() % (i + 1)]);
    std::vector<bool> mask(num_kv_heads, false);
    for (int i = 0; i < per_layer; ++i) mask[heads[i]] = true;
    streaming.push_back(std::move(mask));
  }
  return HeadLayout::FromStreamingMask(streaming);
}

absl::StatusOr<HeadLayout> HeadLayoutFor(const SparseAttentionConfig& config, int num_layers,
                                         int num_kv_heads) {
  if (!config.streaming_heads || config.streaming_ratio == 0.0f) {
    return HeadLayout::AllDense(num_layers, num_kv_heads);
  }
  if (config.gate_file.empty()) {
    return SeededHeadLayout(num_layers, num_kv_heads, config.streaming_ratio, config.head_seed);
  }
  absl::StatusOr<GateTable> gates = ReadGateFile(config.gate_file, num_layers, num_kv_heads);
  if (!gates.ok()) return gates.status();
  return ClassifyHeads(*gates, config.streaming_ratio);
}

}  // namespace lserve
