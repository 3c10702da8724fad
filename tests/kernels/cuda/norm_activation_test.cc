// Parity of the CUDA RmsNorm and SiluMul kernels with double references computed on the
// same bf16-rounded inputs. Tolerance: |out − ref| <= 2⁻⁷·|ref| + 1e-5 (see Bf16Near).
#include "kernels/cuda/norm_activation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/norm_activation.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_buffer.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::Bf16Near;
using testing::Bf16ToFloat;
using testing::CudaDeviceTest;
using testing::kPoisonBf16;
using testing::RandomBf16;

constexpr double kAbsTol = 1e-5;

// The CPU backend's reference (double accumulation) on the same bf16-rounded inputs. x is
// [rows][stride] with the row's first `dim` entries in use; the result is packed.
std::vector<double> RmsNormReference(const std::vector<uint16_t>& x, int64_t rows, int64_t dim,
                                     int64_t stride, const std::vector<uint16_t>& weight,
                                     float eps) {
  std::vector<float> rows_f(rows * dim), weight_f(dim), out_f(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < dim; ++i) rows_f[r * dim + i] = Bf16ToFloat(x[r * stride + i]);
  }
  for (int64_t i = 0; i < dim; ++i) weight_f[i] = Bf16ToFloat(weight[i]);
  cpu::RmsNormReference(rows_f.data(), rows, dim, weight_f.data(), eps, out_f.data());
  return std::vector<double>(out_f.begin(), out_f.end());
}

struct RmsNormCase {
  int64_t rows;
  int64_t dim;
  int64_t x_stride;    // >= dim
  int64_t out_stride;  // >= dim
  int64_t x_offset;    // elements into the x buffer where row 0 starts (misalignment)
  float lo = -2.0f;
  float hi = 2.0f;
};

// Runs one case out of place and checks every output and that the padding stays poisoned.
void CheckRmsNorm(const RmsNormCase& c, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "rows=" << c.rows << " dim=" << c.dim << " x_stride=" << c.x_stride
               << " out_stride=" << c.out_stride << " x_offset=" << c.x_offset);
  const float eps = 1e-5f;
  const std::vector<uint16_t> x = RandomBf16(c.x_offset + c.rows * c.x_stride, seed, c.lo, c.hi);
  const std::vector<uint16_t> weight = RandomBf16(c.dim, seed + 1, 0.5f, 1.5f);
  const std::vector<uint16_t> x_rows(x.begin() + c.x_offset, x.end());
  const std::vector<double> ref = RmsNormReference(x_rows, c.rows, c.dim, c.x_stride, weight, eps);

  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(weight));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out,
                              DeviceBuffer::Allocate(c.rows * c.out_stride * sizeof(uint16_t)));
  LSERVE_ASSERT_OK(d_out.Fill(0xFF));
  LSERVE_ASSERT_OK(RmsNorm({.x = d_x.as<uint16_t>() + c.x_offset,
                            .weight = d_w.as<uint16_t>(),
                            .out = d_out.as<uint16_t>(),
                            .rows = c.rows,
                            .dim = c.dim,
                            .x_row_stride = c.x_stride,
                            .out_row_stride = c.out_stride,
                            .eps = eps,
                            .dtype = DType::kBF16},
                           nullptr));
  LSERVE_ASSERT_OK(SynchronizeStream(nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out,
                              Download<uint16_t>(d_out, c.rows * c.out_stride));
  int failures = 0;
  for (int64_t r = 0; r < c.rows && failures < 10; ++r) {
    for (int64_t i = 0; i < c.out_stride && failures < 10; ++i) {
      const uint16_t got = out[r * c.out_stride + i];
      if (i >= c.dim) {
        EXPECT_EQ(got, kPoisonBf16) << "padding written at row " << r << " col " << i;
        failures += got != kPoisonBf16;
        continue;
      }
      const auto near = Bf16Near(got, ref[r * c.dim + i], kAbsTol);
      EXPECT_TRUE(near) << "row " << r << " col " << i;
      failures += !near;
    }
  }
}

class RmsNormCudaTest : public CudaDeviceTest {};

TEST_F(RmsNormCudaTest, MatchesReferenceOverOddShapes) {
  for (int64_t rows : {1, 3, 17, 129}) {
    for (int64_t dim : {64, 96, 100, 128, 4096}) {
      CheckRmsNorm({.rows = rows, .dim = dim, .x_stride = dim, .out_stride = dim, .x_offset = 0},
                   static_cast<uint32_t>(rows * 7919 + dim));
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(RmsNormCudaTest, StridedRowsLeavePaddingUntouched) {
  // Strides that keep 16-byte alignment (vector path) and ones that break it (scalar path).
  CheckRmsNorm({.rows = 17, .dim = 128, .x_stride = 136, .out_stride = 144, .x_offset = 0}, 1);
  CheckRmsNorm({.rows = 17, .dim = 128, .x_stride = 131, .out_stride = 133, .x_offset = 0}, 2);
  CheckRmsNorm({.rows = 3, .dim = 100, .x_stride = 104, .out_stride = 101, .x_offset = 0}, 3);
}

TEST_F(RmsNormCudaTest, MisalignedInputUsesScalarPath) {
  CheckRmsNorm({.rows = 17, .dim = 4096, .x_stride = 4096, .out_stride = 4096, .x_offset = 1}, 4);
}

TEST_F(RmsNormCudaTest, LargeAndSmallMagnitudes) {
  CheckRmsNorm({.rows = 3,
                .dim = 4096,
                .x_stride = 4096,
                .out_stride = 4096,
                .x_offset = 0,
                .lo = -3000.0f,
                .hi = 3000.0f},
               5);
  // mean(x²) ~ 3e-3 against eps 1e-5: eps still matters in the third digit.
  CheckRmsNorm({.rows = 3,
                .dim = 96,
                .x_stride = 96,
                .out_stride = 96,
                .x_offset = 0,
                .lo = -0.1f,
                .hi = 0.1f},
               6);
}

TEST_F(RmsNormCudaTest, InPlaceMatchesReference) {
  const int64_t rows = 17;
  const int64_t dim = 4096;
  const float eps = 1e-6f;
  const std::vector<uint16_t> x = RandomBf16(rows * dim, 21, -2.0f, 2.0f);
  const std::vector<uint16_t> weight = RandomBf16(dim, 22, 0.5f, 1.5f);
  const std::vector<double> ref = RmsNormReference(x, rows, dim, dim, weight, eps);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(weight));
  LSERVE_ASSERT_OK(RmsNorm({.x = d_x.as<uint16_t>(),
                            .weight = d_w.as<uint16_t>(),
                            .out = d_x.as<uint16_t>(),
                            .rows = rows,
                            .dim = dim,
                            .eps = eps,
                            .dtype = DType::kBF16},
                           nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_x, rows * dim));
  for (int64_t i = 0; i < rows * dim; ++i) {
    ASSERT_TRUE(Bf16Near(out[i], ref[i], kAbsTol)) << "element " << i;
  }
}

// The fused residual add: residual += x rounded to bf16 (bitwise), out = norm(residual),
// on the vector path (dim 4096) and the scalar one (odd dim); out aliases x.
TEST_F(RmsNormCudaTest, FusedResidualAddStoresTheSumAndNormalizesIt) {
  for (int64_t dim : {4096, 1003}) {
    SCOPED_TRACE(dim);
    const int64_t rows = 7;
    const float eps = 1e-6f;
    const std::vector<uint16_t> x = RandomBf16(rows * dim, 31, -2.0f, 2.0f);
    const std::vector<uint16_t> residual = RandomBf16(rows * dim, 32, -4.0f, 4.0f);
    const std::vector<uint16_t> weight = RandomBf16(dim, 33, 0.5f, 1.5f);
    std::vector<uint16_t> sum(rows * dim);
    for (int64_t i = 0; i < rows * dim; ++i) {
      sum[i] = testing::FloatToBf16(Bf16ToFloat(residual[i]) + Bf16ToFloat(x[i]));
    }
    const std::vector<double> ref = RmsNormReference(sum, rows, dim, dim, weight, eps);
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_r, Upload(residual));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(weight));
    LSERVE_ASSERT_OK(RmsNorm({.x = d_x.as<uint16_t>(),
                              .weight = d_w.as<uint16_t>(),
                              .out = d_x.as<uint16_t>(),
                              .rows = rows,
                              .dim = dim,
                              .eps = eps,
                              .residual = d_r.as<uint16_t>(),
                              .dtype = DType::kBF16},
                             nullptr));
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_x, rows * dim));
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> stored, Download<uint16_t>(d_r, rows * dim));
    ASSERT_EQ(stored, sum);
    for (int64_t i = 0; i < rows * dim; ++i) {
      ASSERT_TRUE(Bf16Near(out[i], ref[i], kAbsTol)) << "element " << i;
    }
  }
}

TEST_F(RmsNormCudaTest, ZeroRowGivesZeros) {
  const int64_t dim = 128;
  const std::vector<uint16_t> x(dim, 0);
  const std::vector<uint16_t> weight = RandomBf16(dim, 23, 0.5f, 1.5f);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_w, Upload(weight));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, DeviceBuffer::Allocate(dim * 2));
  LSERVE_ASSERT_OK(d_out.Fill(0xFF));
  LSERVE_ASSERT_OK(RmsNorm({.x = d_x.as<uint16_t>(),
                            .weight = d_w.as<uint16_t>(),
                            .out = d_out.as<uint16_t>(),
                            .rows = 1,
                            .dim = dim,
                            .dtype = DType::kBF16},
                           nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_out, dim));
  for (int64_t i = 0; i < dim; ++i) EXPECT_EQ(out[i], 0) << i;
}

// The CPU backend's reference (double math) on the bf16 inputs.
double SiluMulReference(uint16_t gate, uint16_t up) {
  const float g = Bf16ToFloat(gate);
  const float u = Bf16ToFloat(up);
  float out = 0.0f;
  cpu::SiluMulReference(&g, &u, 1, &out);
  return out;
}

// gate and up live in one [rows][in_stride] buffer at column offsets 0 and up_offset (the
// fused gate_up layout when in_stride = 2·cols, up_offset = cols).
void CheckSiluMul(int64_t rows, int64_t cols, int64_t in_stride, int64_t up_offset,
                  int64_t out_stride, float range, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "rows=" << rows << " cols=" << cols << " in_stride=" << in_stride
               << " up_offset=" << up_offset << " out_stride=" << out_stride);
  const std::vector<uint16_t> in = RandomBf16(rows * in_stride + up_offset, seed, -range, range);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_in, Upload(in));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out,
                              DeviceBuffer::Allocate(rows * out_stride * sizeof(uint16_t)));
  LSERVE_ASSERT_OK(d_out.Fill(0xFF));
  LSERVE_ASSERT_OK(SiluMul({.gate = d_in.as<uint16_t>(),
                            .up = d_in.as<uint16_t>() + up_offset,
                            .out = d_out.as<uint16_t>(),
                            .rows = rows,
                            .cols = cols,
                            .gate_row_stride = in_stride,
                            .up_row_stride = in_stride,
                            .out_row_stride = out_stride,
                            .dtype = DType::kBF16},
                           nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out,
                              Download<uint16_t>(d_out, rows * out_stride));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < out_stride; ++c) {
      const uint16_t got = out[r * out_stride + c];
      if (c >= cols) {
        ASSERT_EQ(got, kPoisonBf16) << "padding written at row " << r << " col " << c;
        continue;
      }
      const double ref = SiluMulReference(in[r * in_stride + c], in[r * in_stride + up_offset + c]);
      ASSERT_TRUE(Bf16Near(got, ref, 1e-6)) << "row " << r << " col " << c;
    }
  }
}

class SiluMulCudaTest : public CudaDeviceTest {};

TEST_F(SiluMulCudaTest, MatchesReferenceOverOddShapes) {
  for (int64_t rows : {1, 3, 17, 129}) {
    for (int64_t cols : {64, 96, 100, 128, 4096}) {
      // Separate packed gate and up: up follows all of gate's rows.
      CheckSiluMul(rows, cols, cols, rows * cols, cols, 4.0f,
                   static_cast<uint32_t>(rows * 31 + cols));
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(SiluMulCudaTest, FusedGateUpLayout) {
  CheckSiluMul(17, 128, 256, 128, 128, 4.0f, 41);  // vector path
  CheckSiluMul(17, 100, 200, 100, 100, 4.0f, 42);  // up misaligned: scalar path
  CheckSiluMul(3, 4096, 8192, 4096, 4104, 4.0f, 43);
}

TEST_F(SiluMulCudaTest, SaturatedGates) {
  // silu(−20) ≈ −4e-8 and silu(20) ≈ 20: both exponential tails.
  CheckSiluMul(3, 4096, 4096, 3 * 4096, 4096, 20.0f, 44);
}

// Argument checks happen before any CUDA call, so these run without a GPU.
TEST(CudaNormActivationValidationTest, RejectsBadArguments) {
  uint16_t fake[8] = {};
  const RmsNormParams good{
      .x = fake, .weight = fake, .out = fake, .rows = 1, .dim = 8, .dtype = DType::kBF16};
  RmsNormParams p = good;
  p.dim = 0;
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.rows = -1;
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.x_row_stride = 4;
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.eps = std::nanf("");
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.weight = nullptr;
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.rows = 0;  // nothing to do: null pointers are fine
  EXPECT_TRUE(RmsNorm(p, nullptr).ok());
  p = good;
  p.dtype = DType::kF32;  // the GPU kernels store bf16
  EXPECT_EQ(RmsNorm(p, nullptr).code(), absl::StatusCode::kInvalidArgument);

  const SiluMulParams silu{
      .gate = fake, .up = fake, .out = fake, .rows = 1, .cols = 8, .dtype = DType::kBF16};
  SiluMulParams q = silu;
  q.cols = 0;
  EXPECT_EQ(SiluMul(q, nullptr).code(), absl::StatusCode::kInvalidArgument);
  q = silu;
  q.up_row_stride = 7;
  EXPECT_EQ(SiluMul(q, nullptr).code(), absl::StatusCode::kInvalidArgument);
  q = silu;
  q.out = nullptr;
  EXPECT_EQ(SiluMul(q, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve::cuda
