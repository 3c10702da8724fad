// lserve_synthetic: writes a deterministic synthetic model (seeded random weights) as a
// Hugging Face folder (config.json + model.safetensors) that lserve and transformers load.
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "worker/model/synthetic_model.h"

ABSL_FLAG(std::string, geometry, "tiny", "tiny (built-in demo), 100m, or llama3-8b");
ABSL_FLAG(int, layers, 0, "Override the number of layers (0 keeps the geometry's)");
ABSL_FLAG(uint64_t, seed, 1, "Weight seed: the same seed gives the same bytes");
ABSL_FLAG(std::string, dtype, "float32", "float32, float16 or bfloat16");
ABSL_FLAG(std::string, out, "", "Output folder (created)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Write a synthetic Llama model as a Hugging Face folder.");
  absl::ParseCommandLine(argc, argv);
  const std::string geometry = absl::GetFlag(FLAGS_geometry);
  lserve::ModelConfig config;
  if (geometry == "tiny") {
    config = lserve::TinySyntheticConfig();
  } else if (geometry == "100m") {
    config = lserve::Synthetic100MConfig();
  } else if (geometry == "llama3-8b") {
    config = lserve::Llama3_8BConfig();
  } else {
    std::cerr << "lserve_synthetic: unknown --geometry '" << geometry << "'\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_layers) > 0) config.num_layers = absl::GetFlag(FLAGS_layers);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  lserve::DType dtype;
  if (dtype_name == "float32") {
    dtype = lserve::DType::kF32;
  } else if (dtype_name == "float16") {
    dtype = lserve::DType::kF16;
  } else if (dtype_name == "bfloat16") {
    dtype = lserve::DType::kBF16;
  } else {
    std::cerr << "lserve_synthetic: unknown --dtype '" << dtype_name << "'\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_out).empty()) {
    std::cerr << "lserve_synthetic: --out is required\n";
    return 1;
  }
  const absl::Status status = lserve::WriteSyntheticModel(config, absl::GetFlag(FLAGS_seed), dtype,
                                                          absl::GetFlag(FLAGS_out));
  if (!status.ok()) {
    std::cerr << "lserve_synthetic: " << status << "\n";
    return 1;
  }
  std::cout << "wrote " << config.NumParameters() << " parameters to " << absl::GetFlag(FLAGS_out)
            << "\n";
  return 0;
}
