// The CUDA backend's GEMM (cuBLASLt) and embedding against references on the same
// bf16-rounded inputs. GEMM: a double-precision x . w^T + bias; bf16 outputs within
// |out - ref| <= 2^-7 |ref| + 2^-16 sum_k |x w| (float32 accumulation), float32 outputs
// within 2^-16 sum_k |x w| + 1e-6. Odd shapes, with and without bias, both output types,
// the algorithm cache exercised by repeating a shape; the few-row kernel on its own, and
// fused with the gated activation. Embedding:
// rows equal bitwise, ids outside the table give zeros, vector and scalar paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/norm_activation.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::Bf16Near;
using testing::Bf16ToFloat;
using testing::CudaDeviceTest;
using testing::RandomBf16;

class GemmCudaTest : public CudaDeviceTest {};

struct GemmCase {
  int64_t m, n, k;
  bool bias;
  DType out;
};

// Runs one GEMM through `run` (twice, so a runner's cached plan is used too) and checks it
// against the reference.
void CheckGemm(const std::function<absl::Status(const GemmParams&)>& run, const GemmCase& c,
               uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "m=" << c.m << " n=" << c.n << " k=" << c.k
                                    << " bias=" << c.bias << " f32=" << (c.out == DType::kF32));
  const std::vector<uint16_t> x = RandomBf16(c.m * c.k, seed, -1.0f, 1.0f);
  const std::vector<uint16_t> w = RandomBf16(c.n * c.k, seed + 1, -1.0f, 1.0f);
  const std::vector<uint16_t> bias = RandomBf16(c.n, seed + 2, -2.0f, 2.0f);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_b, Upload(bias));
  const size_t out_bytes = c.out == DType::kF32 ? 4 : 2;
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_y, DeviceBuffer::Allocate(c.m * c.n * out_bytes));
  GemmParams p;
  p.x = d_x.data();
  p.w = d_w.data();
  p.bias = c.bias ? d_b.data() : nullptr;
  p.y = d_y.data();
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.dtype = DType::kBF16;
  p.out_dtype = c.out;
  for (int repeat = 0; repeat < 2; ++repeat) LSERVE_ASSERT_OK(run(p));
  LSERVE_ASSERT_OK(SynchronizeStream(nullptr));
  std::vector<float> y(c.m * c.n);
  if (c.out == DType::kF32) {
    LSERVE_ASSERT_OK_AND_ASSIGN(y, Download<float>(d_y, c.m * c.n));
  } else {
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> bits, Download<uint16_t>(d_y, c.m * c.n));
    for (size_t i = 0; i < bits.size(); ++i) y[i] = Bf16ToFloat(bits[i]);
  }
  int failures = 0;
  for (int64_t r = 0; r < c.m && failures < 10; ++r) {
    for (int64_t col = 0; col < c.n && failures < 10; ++col) {
      double ref = c.bias ? Bf16ToFloat(bias[col]) : 0.0;
      double magnitude = 0.0;
      for (int64_t i = 0; i < c.k; ++i) {
        const double term = double{Bf16ToFloat(x[r * c.k + i])} * Bf16ToFloat(w[col * c.k + i]);
        ref += term;
        magnitude += std::fabs(term);
      }
      const double accumulation = magnitude * std::ldexp(1.0, -16);
      const double tol = c.out == DType::kF32
                             ? accumulation + 1e-6
                             : testing::kBf16RelTol * std::fabs(ref) + accumulation;
      const double got = y[r * c.n + col];
      if (!(std::fabs(got - ref) <= tol)) {
        ++failures;
        ADD_FAILURE() << "row " << r << " col " << col << ": " << got << " vs " << ref;
      }
    }
  }
}

TEST_F(GemmCudaTest, MatchesReferenceOverOddShapesBiasAndOutputTypes) {
  LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<GemmRunner> gemm, GemmRunner::Create());
  uint32_t seed = 100;
  for (const GemmCase& c : std::vector<GemmCase>{{1, 17, 64, false, DType::kBF16},
                                                 {7, 4096, 128, true, DType::kBF16},
                                                 {33, 1000, 4096, true, DType::kBF16},
                                                 {130, 256, 1000, false, DType::kBF16},
                                                 {3, 32000, 512, false, DType::kF32},
                                                 {5, 999, 96, true, DType::kF32}}) {
    CheckGemm([&](const GemmParams& p) { return gemm->Run(p, nullptr); }, c, seed);
    seed += 10;
  }
}

// The few-row kernel on its own (the runner picks it only when it times fastest): every row
// count it serves, odd and single w rows, k below one lane stride and past several.
TEST_F(GemmCudaTest, SkinnyGemmMatchesReference) {
  uint32_t seed = 300;
  for (int64_t m = 1; m <= kSkinnyGemmMaxRows; ++m) {
    for (const GemmCase& c : std::vector<GemmCase>{{m, 1, 8, true, DType::kBF16},
                                                   {m, 257, 264, false, DType::kBF16},
                                                   {m, 1001, 4104, true, DType::kBF16},
                                                   {m, 3, 2056, true, DType::kF32},
                                                   {m, 4099, 512, false, DType::kF32}}) {
      for (int variant = 0; variant < SkinnyGemmVariants(); ++variant) {
        SCOPED_TRACE(::testing::Message() << "variant " << variant);
        CheckGemm([&](const GemmParams& p) { return SkinnyGemm(p, nullptr, variant); }, c, seed++);
      }
    }
  }
}

TEST_F(GemmCudaTest, SkinnyGemmRejectsWhatItCannotServe) {
  GemmParams p;
  p.m = 1;
  p.n = 16;
  p.k = 12;  // not a multiple of 8
  EXPECT_FALSE(SkinnyGemmSupported(p));
  EXPECT_EQ(SkinnyGemm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.k = 16;
  p.m = kSkinnyGemmMaxRows + 1;
  EXPECT_EQ(SkinnyGemm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.m = 1;
  EXPECT_EQ(SkinnyGemm(p, nullptr, SkinnyGemmVariants()).code(),
            absl::StatusCode::kInvalidArgument);
}

// The fused gated activation gives the bits of its product (the same few-row variant, or
// the runner's plan) stored as bf16 and then SiluMul, for every variant and row count, and
// through the runner for a few-row and a many-row (cuBLASLt) batch.
TEST_F(GemmCudaTest, FusedSiluMulEqualsGemmThenSiluMulBitwise) {
  LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<GemmRunner> runner, GemmRunner::Create());
  uint32_t seed = 700;
  struct Shape {
    int64_t m, n, k;
  };
  std::vector<Shape> shapes;
  for (int64_t m = 1; m <= kSkinnyGemmMaxRows; ++m) {
    shapes.push_back({m, 1, 8});
    shapes.push_back({m, 259, 264});
  }
  shapes.push_back({3, 1001, 1032});
  shapes.push_back({37, 515, 264});  // past the few-row kernel: cuBLASLt, then SiluMul
  for (const Shape& c : shapes) {
    SCOPED_TRACE(::testing::Message() << "m=" << c.m << " n=" << c.n << " k=" << c.k);
    const std::vector<uint16_t> x = RandomBf16(c.m * c.k, seed++, -1.0f, 1.0f);
    const std::vector<uint16_t> w = RandomBf16(2 * c.n * c.k, seed++, -1.0f, 1.0f);
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(w));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer scratch, DeviceBuffer::Allocate(c.m * 2 * c.n * 2));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer fused, DeviceBuffer::Allocate(c.m * c.n * 2));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer apart, DeviceBuffer::Allocate(c.m * c.n * 2));
    const GemmSiluMulParams p{d_x.data(), d_w.data(), fused.data(), scratch.data(),
                              c.m,        c.n,        c.k,          DType::kBF16};
    const GemmParams product{d_x.data(), d_w.data(), nullptr,      scratch.data(), c.m,
                             2 * c.n,    c.k,        DType::kBF16, DType::kBF16};
    const char* gate = static_cast<const char*>(scratch.data());
    const SiluMulParams activation{gate,    gate + c.n * 2, apart.data(), c.m,         c.n,
                                   2 * c.n, 2 * c.n,        c.n,          DType::kBF16};
    auto expect_equal = [&] {
      LSERVE_ASSERT_OK(SynchronizeStream(nullptr));
      LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> a, Download<uint16_t>(fused, c.m * c.n));
      LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> b, Download<uint16_t>(apart, c.m * c.n));
      for (int64_t i = 0; i < c.m * c.n; ++i) {
        ASSERT_EQ(a[i], b[i]) << "element " << i << ": " << Bf16ToFloat(a[i]) << " vs "
                              << Bf16ToFloat(b[i]);
      }
    };
    if (c.m <= kSkinnyGemmMaxRows) {
      for (int variant = 0; variant < SkinnyGemmVariants(); ++variant) {
        SCOPED_TRACE(::testing::Message() << "variant " << variant);
        LSERVE_ASSERT_OK(SkinnyGemmSiluMul(p, nullptr, variant));
        LSERVE_ASSERT_OK(SkinnyGemm(product, nullptr, variant));
        LSERVE_ASSERT_OK(SiluMul(activation, nullptr));
        expect_equal();
      }
    }
    LSERVE_ASSERT_OK(runner->RunSiluMul(p, nullptr));
    LSERVE_ASSERT_OK(runner->Run(product, nullptr));
    LSERVE_ASSERT_OK(SiluMul(activation, nullptr));
    expect_equal();
  }
}

TEST_F(GemmCudaTest, RejectsBadArguments) {
  LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<GemmRunner> gemm, GemmRunner::Create());
  GemmParams p;
  p.m = 1;
  p.n = 1;
  p.k = 1;
  p.dtype = DType::kF32;
  EXPECT_EQ(gemm->Run(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.dtype = DType::kBF16;
  p.n = 0;
  EXPECT_EQ(gemm->Run(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

class EmbeddingCudaTest : public CudaDeviceTest {};

TEST_F(EmbeddingCudaTest, GathersRowsAndZerosIdsOutsideTheTable) {
  for (int64_t dim : {4096, 1003}) {
    SCOPED_TRACE(dim);
    const int64_t table_rows = 50;
    const std::vector<uint16_t> table = RandomBf16(table_rows * dim, 7, -1.0f, 1.0f);
    const std::vector<int32_t> ids = {0, 49, 17, 17, -1, 50, 3};
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_table, Upload(table));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_ids, Upload(ids));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, DeviceBuffer::Allocate(ids.size() * dim * 2));
    LSERVE_ASSERT_OK(d_out.Fill(0xFF));
    EmbeddingParams p;
    p.table = d_table.data();
    p.ids = d_ids.as<int32_t>();
    p.out = d_out.data();
    p.rows = static_cast<int64_t>(ids.size());
    p.dim = dim;
    p.table_rows = table_rows;
    p.dtype = DType::kBF16;
    LSERVE_ASSERT_OK(Embedding(p, nullptr));
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out,
                                Download<uint16_t>(d_out, ids.size() * dim));
    for (size_t r = 0; r < ids.size(); ++r) {
      const bool valid = ids[r] >= 0 && ids[r] < table_rows;
      for (int64_t i = 0; i < dim; ++i) {
        ASSERT_EQ(out[r * dim + i], valid ? table[ids[r] * dim + i] : 0) << r << " " << i;
      }
    }
  }
}

}  // namespace
}  // namespace lserve::cuda
