#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/model/test_files.h"
#include "worker/model/safetensors.h"

namespace lserve {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

const std::vector<float> kValuesA = {1, 2, 3, 4};
const std::vector<float> kValuesB = {-1, -2};

// Two shards: "a" and "c" in the first, "b" in the second.
void WriteShards(const ScratchDir& dir) {
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors",
                               {{"a", {2, 2}, kValuesA}, {"c", {2}, kValuesB}}, DType::kF32)
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir / "model-00002-of-00002.safetensors", {{"b", {2}, kValuesB}},
                               DType::kBF16)
                  .ok());
}

constexpr char kIndex[] = R"({"metadata": {"total_size": 28}, "weight_map": {
  "a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors",
  "b": "model-00002-of-00002.safetensors"}})";

void ExpectOpenFails(const std::filesystem::path& folder, absl::StatusCode code,
                     const std::vector<std::string>& needles) {
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(folder);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), code) << reader.status();
  for (const std::string& needle : needles) {
    EXPECT_THAT(reader.status().message(), HasSubstr(needle));
  }
}

TEST(CheckpointReaderTest, ReadsSingleFileCheckpoint) {
  ScratchDir dir;
  ASSERT_TRUE(
      WriteSafetensors(dir / "model.safetensors", {{"a", {4}, kValuesA}}, DType::kF16).ok());
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->Has("a"));
  EXPECT_FALSE((*reader)->Has("b"));
  absl::StatusOr<const TensorInfo*> a = (*reader)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->dtype, DType::kF16);
}

TEST(CheckpointReaderTest, ReadsShardedCheckpointThroughIndex) {
  ScratchDir dir;
  WriteShards(dir);
  WriteBytes(dir / "model.safetensors.index.json", kIndex);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (const char* name : {"a", "b", "c"}) EXPECT_TRUE((*reader)->Has(name)) << name;
  absl::StatusOr<const TensorInfo*> b = (*reader)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_THAT((*b)->file, HasSubstr("model-00002-of-00002.safetensors"));
  std::vector<float> out(2);
  ASSERT_TRUE(ConvertToFloat32(**b, out).ok());
  EXPECT_EQ(out, kValuesB);
}

TEST(CheckpointReaderTest, MissingTensorIsNotFoundNamingTensorAndFolder) {
  ScratchDir dir;
  WriteShards(dir);
  WriteBytes(dir / "model.safetensors.index.json", kIndex);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  absl::StatusOr<const TensorInfo*> missing = (*reader)->Get("lm_head.weight");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr("lm_head.weight"), HasSubstr(dir.path().string())));
}

TEST(CheckpointReaderTest, IndexWithMissingShardIsNotFound) {
  ScratchDir dir;
  WriteShards(dir);
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  WriteBytes(dir / "model.safetensors.index.json", kIndex);
  ExpectOpenFails(dir.path(), absl::StatusCode::kNotFound,
                  {"model-00002-of-00002.safetensors", "model.safetensors.index.json"});
}

TEST(CheckpointReaderTest, RejectsMalformedIndex) {
  ScratchDir dir;
  WriteShards(dir);
  const std::filesystem::path index = dir / "model.safetensors.index.json";
  WriteBytes(index, "{\"weight_map\": ");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument,
                  {index.string(), "not valid JSON"});
  WriteBytes(index, R"({"weight_map": ["a", "b"]})");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument, {index.string(), "weight_map"});
  WriteBytes(index, R"({"metadata": {}})");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument, {index.string(), "weight_map"});
  WriteBytes(index, R"({"weight_map": {"a": 3}})");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument, {index.string(), "'a'"});
  WriteBytes(index, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument, {index.string(), "'a'"});
  // The index puts "b" in the first shard, which lacks it.
  WriteBytes(index, R"({"weight_map": {"b": "model-00001-of-00002.safetensors"}})");
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument,
                  {index.string(), "'b'", "model-00001-of-00002.safetensors"});
}

TEST(CheckpointReaderTest, CorruptShardErrorNamesTheShard) {
  ScratchDir dir;
  WriteShards(dir);
  WriteBytes(dir / "model-00002-of-00002.safetensors", "short");
  WriteBytes(dir / "model.safetensors.index.json", kIndex);
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument,
                  {"model-00002-of-00002.safetensors"});
}

TEST(CheckpointReaderTest, ShardWithOverlappingTensorsIsRejectedNamingShardAndTensors) {
  ScratchDir dir;
  WriteShards(dir);
  WriteBytes(
      dir / "model-00002-of-00002.safetensors",
      testing_util::SafetensorsBytes(R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
                                     R"("x":{"dtype":"BF16","shape":[2],"data_offsets":[2,6]}})",
                                     std::string(6, '\0')));
  WriteBytes(dir / "model.safetensors.index.json", kIndex);
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument,
                  {"model-00002-of-00002.safetensors", "'b' [0, 4]", "'x' [2, 6]", "overlap"});
}

TEST(CheckpointReaderTest, SingleFileWithHoleInDataIsRejected) {
  ScratchDir dir;
  WriteBytes(
      dir / "model.safetensors",
      testing_util::SafetensorsBytes(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},)"
                                     R"("b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}})",
                                     std::string(6, '\0')));
  ExpectOpenFails(dir.path(), absl::StatusCode::kInvalidArgument,
                  {"model.safetensors", "[2, 4)", "'a'", "'b'"});
}

TEST(CheckpointReaderTest, FolderWithoutWeightsIsNotFound) {
  ScratchDir dir;
  ExpectOpenFails(dir.path(), absl::StatusCode::kNotFound,
                  {dir.path().string(), "model.safetensors"});
  ExpectOpenFails(dir / "absent", absl::StatusCode::kNotFound, {"absent"});
}

}  // namespace
}  // namespace lserve
