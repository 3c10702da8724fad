// What the router asks of one worker, transport-free: the generation stream, the
// hand-off calls, load and health. grpc_worker_client.h implements it over gRPC; tests
// may fake it.
#ifndef LSERVE_ROUTER_WORKER_CLIENT_H_
#define LSERVE_ROUTER_WORKER_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.pb.h"
#include "lserve/v1/worker.pb.h"

namespace lserve {

using Deadline = std::chrono::system_clock::time_point;

// Lets one thread cancel a call another thread is blocked in.
class Cancellation {
 public:
  void Cancel();
  bool cancelled() const;
  // Runs hook on Cancel (at once when already cancelled); the hook is dropped by Clear.
  void SetHook(std::function<void()> hook);
  void Clear();

 private:
  mutable std::mutex mu_;
  bool cancelled_ = false;
  std::function<void()> hook_;
};

// Receives each response of a stream, in order.
using StreamCallback = std::function<void(const v1::GenerateResponse&)>;

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  virtual const std::string& address() const = 0;

  virtual absl::Status Generate(const v1::GenerateRequest& request, Deadline deadline,
                                const StreamCallback& on_response, Cancellation* cancel) = 0;
  virtual absl::Status Decode(const v1::DecodeRequest& request, Deadline deadline,
                              const StreamCallback& on_response, Cancellation* cancel) = 0;
  virtual absl::StatusOr<v1::ReserveKvResponse> ReserveKv(const v1::ReserveKvRequest& request,
                                                          Deadline deadline) = 0;
  virtual absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request,
                                                      Deadline deadline, Cancellation* cancel) = 0;
  virtual absl::StatusOr<v1::TransferKvResponse> TransferKv(const v1::TransferKvRequest& request,
                                                            Deadline deadline,
                                                            Cancellation* cancel) = 0;
  virtual absl::Status ReleaseKv(const v1::ReleaseKvRequest& request, Deadline deadline) = 0;
  virtual absl::StatusOr<v1::Load> GetLoad(Deadline deadline) = 0;
  virtual absl::StatusOr<v1::ModelInfo> GetModelInfo(Deadline deadline) = 0;
  // grpc.health.v1: true when SERVING.
  virtual absl::StatusOr<bool> Healthy(Deadline deadline) = 0;
};

class WorkerClientFactory {
 public:
  virtual ~WorkerClientFactory() = default;
  virtual std::shared_ptr<WorkerClient> Connect(const std::string& address) = 0;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_WORKER_CLIENT_H_
