// Feeds arbitrary text to the config.json parser. An accepted config must pass validation
// on its own and survive a round trip through the config.json writer.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<lserve::ModelConfig> config = lserve::ParseModelConfig(text, "config.json");
  if (!config.ok()) return 0;
  if (!lserve::ValidateModelConfig(*config).ok()) __builtin_trap();
  const std::string written = lserve::ModelConfigToJson(*config);
  absl::StatusOr<lserve::ModelConfig> reread = lserve::ParseModelConfig(written, "written.json");
  if (!reread.ok() || reread->NumParameters() != config->NumParameters() ||
      lserve::ModelConfigToJson(*reread) != written) {
    __builtin_trap();
  }
  return 0;
}
