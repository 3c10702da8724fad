// The lserve-worker's one config message (lserve.v1.WorkerConfig): defaults, validation,
// and what it means for the engine and the scheduler.
#ifndef LSERVE_WORKER_SERVICE_WORKER_CONFIG_H_
#define LSERVE_WORKER_SERVICE_WORKER_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "lserve/v1/config.pb.h"
#include "worker/engine.h"
#include "worker/model/model_weights.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {

// Fills unset fields with the worker's defaults (listen 127.0.0.1:50051, tiny built-in
// model, cpu backend, unified role, ...).
void ApplyWorkerDefaults(v1::WorkerConfig* config);

// Parses a text-format WorkerConfig; errors name `source` and the line.
absl::StatusOr<v1::WorkerConfig> ParseWorkerConfig(const std::string& text,
                                                   const std::string& source);

// Every field in range and consistent; INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateWorkerConfig(const v1::WorkerConfig& config);

absl::StatusOr<SparseAttentionConfig> AttentionFor(const v1::AttentionSettings& settings);
absl::StatusOr<EngineOptions> EngineOptionsFor(const v1::WorkerConfig& config);
absl::StatusOr<SchedulerOptions> SchedulerOptionsFor(const v1::WorkerConfig& config);
absl::StatusOr<ModelWeights> LoadWorkerModel(const v1::WorkerConfig& config);
std::string ServedModelName(const v1::WorkerConfig& config);

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_WORKER_CONFIG_H_
