#include "worker/model/safetensors.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/model/test_files.h"

namespace lserve {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_util::ReadBytes;
using testing_util::SafetensorsBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// Opening `bytes` as a safetensors file must fail with InvalidArgument naming the file and
// every string in `needles`.
void ExpectCorrupt(const std::string& bytes, const std::vector<std::string>& needles) {
  ScratchDir dir;
  const std::filesystem::path path = dir / "corrupt.safetensors";
  WriteBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  for (const std::string& needle : needles) {
    EXPECT_THAT(file.status().message(), HasSubstr(needle));
  }
}

TEST(DTypeConversionTest, HalfSpecialValuesWidenExactly) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));  // signalling NaN stays NaN
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
  EXPECT_EQ(HalfToFloat(0x8000), 0.0f);
}

TEST(DTypeConversionTest, FloatToHalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // the tie goes to the even neighbour: infinity
  EXPECT_EQ(FloatToHalf(1e9f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e9f), 0xfc00);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, down to even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, up to even
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (zero)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);     // 1.5 ulp ties up to 2
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.5f, -24)), 0x0400);  // rounds into the normals
  EXPECT_EQ(FloatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  // A NaN whose payload lives only in the low bits must not become infinity.
  EXPECT_NE(FloatToHalf(std::bit_cast<float>(0x7f800001u)) & 0x03ff, 0);
}

TEST(DTypeConversionTest, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = HalfToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(value)))) << bits;
    } else {
      ASSERT_EQ(FloatToHalf(value), bits) << bits;
    }
  }
}

#ifdef __FLT16_MAX__
TEST(DTypeConversionTest, FloatToHalfMatchesCompilerConversion) {
  uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    // Exponents concentrated around the half range, including subnormals and overflow.
    const uint32_t bits = (state & 0x807fffffu) | ((96u + (state >> 8) % 64u) << 23);
    const float value = std::bit_cast<float>(bits);
    const _Float16 reference = static_cast<_Float16>(value);
    ASSERT_EQ(FloatToHalf(value), std::bit_cast<uint16_t>(reference)) << value;
  }
}
#endif

TEST(DTypeConversionTest, BFloat16SpecialValues) {
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(BFloat16ToFloat(0x0001), std::bit_cast<float>(0x00010000u));  // subnormal
  EXPECT_EQ(BFloat16ToFloat(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(0x7fc0)));
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie down to even
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie up to even
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBFloat16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x00018000u)), 0x0002);  // subnormal tie
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::bit_cast<float>(0x7f800001u)))));
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = BFloat16ToFloat(static_cast<uint16_t>(bits));
    if (!std::isnan(value)) {
      ASSERT_EQ(FloatToBFloat16(value), bits) << bits;
    }
  }
}

TEST(SafetensorsTest, WritesAndReadsEveryDType) {
  ScratchDir dir;
  const std::vector<float> matrix = {1.0f, -2.5f, 0.125f, 3.0f, 1e-3f, -7.0f};
  const std::vector<float> vector = {0.5f, 65504.0f};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::filesystem::path path = dir / "tensors.safetensors";
    ASSERT_TRUE(
        WriteSafetensors(path, {{"b.matrix", {2, 3}, matrix}, {"a.vector", {2}, vector}}, dtype)
            .ok());
    const std::string bytes = ReadBytes(path);
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    EXPECT_EQ(header_size % 8, 0u);
    const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_size));
    EXPECT_EQ(header["__metadata__"]["format"], "pt");

    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_EQ((*file)->tensors().size(), 2u);
    const TensorInfo* info = (*file)->Find("b.matrix");
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, dtype);
    EXPECT_THAT(info->shape, ElementsAre(2, 3));
    EXPECT_EQ(info->NumElements(), 6);
    EXPECT_EQ(info->num_bytes, 6 * DTypeSize(dtype));
    EXPECT_EQ(info->file, path.string());
    std::vector<float> out(6);
    ASSERT_TRUE(ConvertToFloat32(*info, out).ok());
    for (size_t i = 0; i < out.size(); ++i) {
      const float expected = dtype == DType::kF32   ? matrix[i]
                             : dtype == DType::kF16 ? HalfToFloat(FloatToHalf(matrix[i]))
                                                    : BFloat16ToFloat(FloatToBFloat16(matrix[i]));
      EXPECT_EQ(out[i], expected) << DTypeName(dtype) << " " << i;
    }
    EXPECT_EQ((*file)->Find("missing"), nullptr);
  }
}

TEST(SafetensorsTest, ReadsUnalignedDataAndEmptyTensors) {
  const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("e":{"dtype":"BF16","shape":[0,4],"data_offsets":[8,8]}})";
  std::string padded = header;
  while ((8 + padded.size()) % 8 != 2) padded += ' ';  // data section starts unaligned
  ScratchDir dir;
  WriteBytes(dir / "u.safetensors", SafetensorsBytes(padded, FloatBytes({1.5f, -4.0f})));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "u.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(reinterpret_cast<uintptr_t>((*file)->Find("x")->data) % 4, 2u);
  std::vector<float> out(2);
  ASSERT_TRUE(ConvertToFloat32(*(*file)->Find("x"), out).ok());
  EXPECT_THAT(out, ElementsAre(1.5f, -4.0f));
  EXPECT_EQ((*file)->Find("e")->NumElements(), 0);
  EXPECT_TRUE(ConvertToFloat32(*(*file)->Find("e"), {}).ok());
}

TEST(SafetensorsTest, ConvertRejectsWrongOutputSize) {
  const std::vector<float> values = {1, 2, 3};
  TensorInfo info{"t", DType::kF32, {3}, reinterpret_cast<const uint8_t*>(values.data()), 12, "f"};
  std::vector<float> out(2);
  const absl::Status status = ConvertToFloat32(info, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'t'"));
}

TEST(SafetensorsTest, RejectsFileShorterThanHeaderLength) {
  ExpectCorrupt("abcde", {"8-byte"});
  ExpectCorrupt("", {"8-byte"});
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  ExpectCorrupt(SafetensorsBytes("{}", "", 4096), {"header length 4096"});
  ExpectCorrupt(SafetensorsBytes("{}", "", ~uint64_t{0} - 3), {"runs past the end"});
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotAJsonObject) {
  ExpectCorrupt(SafetensorsBytes("{\"a\": ", ""), {"not valid JSON"});
  ExpectCorrupt(SafetensorsBytes("[1, 2, 3]", ""), {"not a JSON object"});
  ExpectCorrupt(SafetensorsBytes(R"({"t": 5})", ""), {"'t'"});
}

TEST(SafetensorsTest, RejectsUnsupportedDTypes) {
  for (const char* dtype : {"F64", "I8", "BOOL"}) {
    const std::string header =
        absl::StrCat(R"({"model.w":{"dtype":")", dtype, R"(","shape":[1],"data_offsets":[0,8]}})");
    ExpectCorrupt(SafetensorsBytes(header, std::string(8, '\0')),
                  {"model.w", "unsupported dtype", dtype});
  }
}

TEST(SafetensorsTest, RejectsBadShapesAndOffsets) {
  const std::string data(16, '\0');
  ExpectCorrupt(
      SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,24]}})", data),
      {"'w'", "outside the data section"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,4]}})", data),
                {"'w'", "data_offsets"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
                {"'w'", "needs 12"});
  ExpectCorrupt(
      SafetensorsBytes(R"({"w":{"dtype":"F16","shape":[-2,2],"data_offsets":[0,8]}})", data),
      {"'w'", "negative"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F16","shape":[4611686018427387904,4],)"
                                 R"("data_offsets":[0,8]}})",
                                 data),
                {"'w'"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", data),
                {"'w'", "shape"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data),
                {"'w'", "data_offsets"});
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", data),
                {"'w'", "dtype"});
}

// Three F32 tensors of two floats each, with the given data_offsets, over 24 data bytes
// unless `data_bytes` says otherwise.
std::string ThreeTensorFile(const std::string& a, const std::string& b, const std::string& c,
                            size_t data_bytes = 24) {
  const std::string header =
      absl::StrCat(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":)", a, R"(},)",
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":)", b, R"(},)",
                   R"("c":{"dtype":"F32","shape":[2],"data_offsets":)", c, "}}");
  return SafetensorsBytes(header, std::string(data_bytes, '\0'));
}

TEST(SafetensorsTest, AcceptsTensorsListedOutOfOffsetOrder) {
  ScratchDir dir;
  WriteBytes(dir / "t.safetensors", ThreeTensorFile("[16,24]", "[0,8]", "[8,16]"));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "t.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("b")->data + 16, (*file)->Find("a")->data);
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectCorrupt(ThreeTensorFile("[0,8]", "[4,12]", "[12,20]", 20),
                {"'a' [0, 8]", "'b' [4, 12]", "overlap"});
  // Two tensors over the same bytes.
  ExpectCorrupt(ThreeTensorFile("[0,8]", "[8,16]", "[8,16]", 16), {"'b'", "'c'", "overlap"});
}

TEST(SafetensorsTest, RejectsHolesBetweenTensors) {
  ExpectCorrupt(ThreeTensorFile("[0,8]", "[12,20]", "[20,28]", 28),
                {"[8, 12)", "'a' [0, 8]", "'b' [12, 20]", "belong to no tensor"});
}

TEST(SafetensorsTest, RejectsDataSectionNotStartingWithATensor) {
  ExpectCorrupt(ThreeTensorFile("[4,12]", "[12,20]", "[20,28]", 28),
                {"[0, 4)", "'a' [4, 12]", "belong to no tensor"});
}

TEST(SafetensorsTest, RejectsTrailingBytesAfterTheLastTensor) {
  ExpectCorrupt(ThreeTensorFile("[0,8]", "[8,16]", "[16,24]", 25),
                {"1 trailing data bytes", "'c' [16, 24]"});
  ExpectCorrupt(SafetensorsBytes("{}", "abcd"), {"no tensors", "4 bytes"});
}

TEST(SafetensorsTest, ZeroSizeTensorsMayStartAtAnyBoundary) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("z0":{"dtype":"F16","shape":[0],"data_offsets":[0,0]},)"
                             R"("z1":{"dtype":"F32","shape":[3,0],"data_offsets":[8,8]},)"
                             R"("z2":{"dtype":"BF16","shape":[0],"data_offsets":[8,8]}})";
  ScratchDir dir;
  WriteBytes(dir / "z.safetensors", SafetensorsBytes(header, FloatBytes({1.0f, 2.0f})));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "z.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 4u);
  ExpectCorrupt(SafetensorsBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                                 FloatBytes({1.0f, 2.0f})),
                {"'a' [0, 8]", "'z' [4, 4]", "overlap"});
}

TEST(SafetensorsTest, DuplicateHeaderKeysLeaveAHole) {
  // JSON keeps the last duplicate, so the first one's bytes belong to no tensor.
  ExpectCorrupt(SafetensorsBytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                 std::string(8, '\0')),
                {"[0, 4)", "'w' [4, 8]"});
}

TEST(SafetensorsTest, ParsesFromMemoryWithTheSameRules) {
  const std::vector<float> values = {1.0f, 2.0f};
  const std::string good = SafetensorsBytes(
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", FloatBytes(values));
  absl::StatusOr<std::vector<TensorInfo>> tensors =
      ParseSafetensors({reinterpret_cast<const uint8_t*>(good.data()), good.size()}, "in-memory");
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_EQ((*tensors)[0].data, reinterpret_cast<const uint8_t*>(good.data()) + good.size() - 8);
  EXPECT_EQ((*tensors)[0].file, "in-memory");
  const std::string padded = good + "xx";
  absl::StatusOr<std::vector<TensorInfo>> bad = ParseSafetensors(
      {reinterpret_cast<const uint8_t*>(padded.data()), padded.size()}, "in-memory");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), AllOf(HasSubstr("in-memory"), HasSubstr("trailing")));
  EXPECT_FALSE(ParseSafetensors({}, "empty").ok());
}

TEST(SafetensorsTest, RejectsHeadersAboveTheReferenceLimit) {
  const uint64_t length = 100'000'001;  // one byte over; a header of spaces is never parsed
  std::string bytes(8 + length, ' ');
  std::memcpy(bytes.data(), &length, sizeof(length));
  absl::StatusOr<std::vector<TensorInfo>> tensors = ParseSafetensors(
      {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "big.safetensors");
  ASSERT_FALSE(tensors.ok());
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(),
              AllOf(HasSubstr("big.safetensors"), HasSubstr("exceeds the limit")));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open("/nonexistent/x.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/x.safetensors"));
}

TEST(SafetensorsTest, WriteRejectsInconsistentTensors) {
  ScratchDir dir;
  const std::vector<float> values = {1, 2, 3};
  EXPECT_EQ(WriteSafetensors(dir / "a.safetensors", {{"w", {2, 2}, values}}, DType::kF32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      WriteSafetensors(dir / "a.safetensors", {{"w", {3}, values}, {"w", {3}, values}}, DType::kF32)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(dir / "a.safetensors", {{"w", {-3}, values}}, DType::kF32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir / "a.safetensors"));
  EXPECT_EQ(
      WriteSafetensors("/nonexistent/dir/a.safetensors", {{"w", {3}, values}}, DType::kF32).code(),
      absl::StatusCode::kUnavailable);
}

TEST(SafetensorsTest, RandomByteCorruptionNeverCrashes) {
  ScratchDir dir;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteSafetensors(dir / "good.safetensors",
                               {{"w", {2, 3}, values}, {"v", {6}, values}}, DType::kBF16)
                  .ok());
  const std::string good = ReadBytes(dir / "good.safetensors");
  uint64_t state = 99;
  int opened = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int edits = 1 + trial % 4;
    for (int e = 0; e < edits; ++e) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      bytes[(state >> 33) % bytes.size()] = static_cast<char>(state >> 56);
    }
    if (trial % 7 == 0) bytes.resize((state >> 20) % bytes.size());
    WriteBytes(dir / "fuzz.safetensors", bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(dir / "fuzz.safetensors");
    if (!file.ok()) continue;
    ++opened;
    for (const TensorInfo& info : (*file)->tensors()) {
      std::vector<float> out(info.NumElements());
      EXPECT_TRUE(ConvertToFloat32(info, out).ok());
    }
  }
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace lserve
