// The staging plan of a scattered transfer, played out on host memory: the sender's plan
// gathers its ranges chunk by chunk, the chunks travel as they are, and the receiver's
// plan scatters them into ranges of the same sizes elsewhere; every byte lands where it
// belongs, chunks are full but the last, no piece crosses a chunk, and chunks take the
// staging buffers in turn; direct transfers group their ranges alike on both ranks.
#include "kernels/nccl/staging_plan.h"

#include <cstring>
#include <numeric>
#include <random>

#include "gtest/gtest.h"

namespace lserve::nccl {
namespace {

void PlayOut(const StagingPlan& plan) {
  for (const RangeCopy& copy : plan.copies) std::memcpy(copy.dst, copy.src, copy.bytes);
}

TEST(StagingPlanTest, GatheredChunksScatterIntoTheReceiversRanges) {
  std::mt19937 random(5);
  for (size_t staging_bytes : {size_t{64}, size_t{1000}, size_t{4096}}) {
    std::vector<size_t> sizes;
    for (int i = 0; i < 300; ++i) sizes.push_back(i % 17 == 0 ? 0 : random() % 700 + 1);
    const size_t total = std::accumulate(sizes.begin(), sizes.end(), size_t{0});
    std::vector<uint8_t> source(total), target(total, 0);
    for (size_t i = 0; i < total; ++i) source[i] = static_cast<uint8_t>(random());
    // The receiver's ranges lie in reverse order in its memory.
    std::vector<ByteRange> sends, receives;
    size_t offset = 0;
    for (size_t size : sizes) {
      sends.push_back({source.data() + offset, size});
      receives.push_back({target.data() + (total - offset - size), size});
      offset += size;
    }
    std::vector<uint8_t> sender_memory(2 * staging_bytes), receiver_memory(2 * staging_bytes);
    void* const sender_buffers[] = {sender_memory.data(), sender_memory.data() + staging_bytes};
    void* const receiver_buffers[] = {receiver_memory.data(),
                                      receiver_memory.data() + staging_bytes};
    const StagingPlan gather = PlanStaging(sends, true, sender_buffers, staging_bytes);
    const StagingPlan scatter = PlanStaging(receives, false, receiver_buffers, staging_bytes);
    ASSERT_EQ(gather.chunk_bytes, scatter.chunk_bytes);
    ASSERT_EQ(gather.chunk_first, scatter.chunk_first);
    EXPECT_EQ(std::accumulate(gather.chunk_bytes.begin(), gather.chunk_bytes.end(), size_t{0}),
              total);
    for (size_t c = 0; c < gather.chunk_first.size(); ++c) {
      if (c + 1 < gather.chunk_first.size()) {
        EXPECT_EQ(gather.chunk_bytes[c], staging_bytes);
      }
      StagingPlan one_chunk;
      one_chunk.copies.assign(gather.copies.begin() + gather.chunk_first[c],
                              gather.copies.begin() + gather.chunk_end(c));
      PlayOut(one_chunk);  // gather chunk c
      ASSERT_EQ(gather.chunk_buffer[c], sender_buffers[c % 2]);
      ASSERT_EQ(scatter.chunk_buffer[c], receiver_buffers[c % 2]);
      std::memcpy(scatter.chunk_buffer[c], gather.chunk_buffer[c],
                  gather.chunk_bytes[c]);  // "send"
      one_chunk.copies.assign(scatter.copies.begin() + scatter.chunk_first[c],
                              scatter.copies.begin() + scatter.chunk_end(c));
      for (const RangeCopy& copy : one_chunk.copies) {
        const auto* staged = static_cast<const uint8_t*>(copy.src);
        const auto* buffer = static_cast<const uint8_t*>(receiver_buffers[c % 2]);
        ASSERT_GE(staged, buffer);
        ASSERT_LE(staged + copy.bytes, buffer + staging_bytes);
      }
      PlayOut(one_chunk);  // scatter chunk c
    }
    offset = 0;
    for (size_t size : sizes) {
      ASSERT_EQ(std::memcmp(target.data() + (total - offset - size), source.data() + offset, size),
                0)
          << "staging " << staging_bytes << ", range at " << offset;
      offset += size;
    }
  }
}

// Direct transfers: groups hold at most the group size, end between layers once past the
// layer size, and cover every byte in order; the other rank, with equal sizes and layers
// elsewhere in memory, cuts the same groups.
TEST(GroupPlanTest, GroupsEndBetweenLayersAndBothRanksCutAlike) {
  std::vector<uint8_t> sender(4000), receiver(4000);
  const std::vector<std::pair<size_t, int>> shape = {{100, 0}, {30, 0}, {250, 1}, {10, 1},
                                                     {0, 2},   {70, 2}, {40, 3},  {900, 3}};
  std::vector<ByteRange> sends, receives;
  size_t offset = 0;
  for (const auto& [bytes, layer] : shape) {
    sends.push_back({sender.data() + offset, bytes, layer});
    receives.push_back({receiver.data() + 3000 - offset, bytes, layer});
    offset += bytes;
  }
  const auto send_groups = PlanGroups(sends, /*max_group_bytes=*/256, /*layer_group_bytes=*/64);
  const auto receive_groups = PlanGroups(receives, 256, 64);
  ASSERT_EQ(send_groups.size(), receive_groups.size());
  std::vector<size_t> sizes;
  size_t covered = 0;
  const uint8_t* expected = sender.data();
  for (size_t g = 0; g < send_groups.size(); ++g) {
    ASSERT_EQ(send_groups[g].size(), receive_groups[g].size());
    size_t bytes = 0;
    for (size_t i = 0; i < send_groups[g].size(); ++i) {
      EXPECT_EQ(send_groups[g][i].bytes, receive_groups[g][i].bytes);
      EXPECT_EQ(send_groups[g][i].layer, receive_groups[g][i].layer);
      EXPECT_EQ(send_groups[g][i].data, expected);  // in order, no byte twice
      expected += send_groups[g][i].bytes;
      bytes += send_groups[g][i].bytes;
    }
    EXPECT_LE(bytes, 256u);
    sizes.push_back(bytes);
    covered += bytes;
  }
  EXPECT_EQ(covered, offset);
  // Layer 0 (130 bytes) makes a group; layer 1's 260 bytes need two; layer 2's 70 join the
  // 10 left of layer 1 (those were under the layer size); layer 3 starts anew, its 900
  // bytes cut in pieces of at most 256 from the range's start.
  const std::vector<size_t> expected_sizes = {130, 250, 80, 40, 256, 256, 256, 132};
  EXPECT_EQ(sizes, expected_sizes);
}

}  // namespace
}  // namespace lserve::nccl
