// Which KV heads of each layer are dense (retrieval) and which are streaming, and where
// each head lives inside its pool's page.
#ifndef LSERVE_KVSTORE_HEAD_LAYOUT_H_
#define LSERVE_KVSTORE_HEAD_LAYOUT_H_

#include <vector>

namespace lserve {

struct LayerHeadLayout {
  std::vector<bool> streaming;  // per KV head
  std::vector<int> slot;        // index of the head inside its pool's page for this layer
  int num_dense = 0;
  int num_streaming = 0;
};

struct HeadLayout {
  std::vector<LayerHeadLayout> layers;

  // streaming[layer][kv_head] marks streaming heads.
  static HeadLayout FromStreamingMask(const std::vector<std::vector<bool>>& streaming) {
    HeadLayout layout;
    for (const auto& layer_mask : streaming) {
      LayerHeadLayout layer;
      layer.streaming = layer_mask;
      for (bool is_streaming : layer_mask) {
        layer.slot.push_back(is_streaming ? layer.num_streaming++ : layer.num_dense++);
      }
      layout.layers.push_back(std::move(layer));
    }
    return layout;
  }

  static HeadLayout AllDense(int num_layers, int num_kv_heads) {
    return FromStreamingMask(
        std::vector<std::vector<bool>>(num_layers, std::vector<bool>(num_kv_heads, false)));
  }

  int TotalStreamingHeads() const {
    int total = 0;
    for (const auto& layer : layers) total += layer.num_streaming;
    return total;
  }
  int TotalDenseHeads() const {
    int total = 0;
    for (const auto& layer : layers) total += layer.num_dense;
    return total;
  }
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_HEAD_LAYOUT_H_
