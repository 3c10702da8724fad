// The worker's request logic, transport-free (DESIGN.md §5): converts and validates
// lserve.v1 messages, runs them through the EngineLoop, and reports through callbacks and
// absl::Status. worker_service.cc adapts it to gRPC; tests call it directly.
#ifndef LSERVE_WORKER_SERVICE_WORKER_HANDLER_H_
#define LSERVE_WORKER_SERVICE_WORKER_HANDLER_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "lserve/v1/config.pb.h"
#include "lserve/v1/generation.pb.h"
#include "lserve/v1/worker.pb.h"
#include "worker/service/early_kv_push.h"
#include "worker/service/engine_loop.h"
#include "worker/service/kv_transport.h"
#include "worker/service/kv_wire.h"
#include "worker/service/metrics.h"

namespace lserve {

struct WorkerIdentity {
  std::string model_name;
  v1::WorkerRole role = v1::WORKER_ROLE_UNIFIED;
  std::string backend;
  int32_t max_context = 0;  // requests beyond it are refused
  std::chrono::milliseconds kv_lease{30000};
  int64_t max_kv_bytes = int64_t{64} << 30;  // largest KV a push may announce
};

v1::GeneratedToken ToProtoToken(const GeneratedToken& token, bool logprobs);
v1::Timings ToProtoTimings(const RequestTimings& timings);

// Receives the responses of one stream. `final` is set on the last call, with the
// stream's outcome; calls come from the engine thread, in order.
using ResponseSink =
    std::function<void(const v1::GenerateResponse& response, bool final, const absl::Status&)>;

class WorkerHandler {
 public:
  // loop, transport and metrics (which may be null) must outlive the handler.
  WorkerHandler(EngineLoop* loop, WorkerIdentity identity, KvTransport* transport,
                WorkerMetrics* metrics);
  ~WorkerHandler();  // waits for hand-offs started during prefills
  // Waits for the hand-offs started during prefills (they may need the engine thread):
  // call once no RPC reaches the handler any more, before the engine loop stops.
  void StopHandOffs() { early_pushes_.reset(); }

  // The public API. `deadline` is the call's (the transport's) deadline, if any.
  absl::StatusOr<RequestId> StartGenerate(const v1::GenerateRequest& request,
                                          std::optional<SteadyClock::time_point> deadline,
                                          ResponseSink sink);
  // The stream's client went away: the request stops and frees its pages.
  void Cancel(RequestId id);
  absl::Status Abort(const v1::AbortRequest& request);
  v1::ModelInfo ModelInfo() const;
  v1::Load Load() const;

  // The internal API of the disaggregated hand-off.
  absl::StatusOr<v1::ReserveKvResponse> ReserveKv(const v1::ReserveKvRequest& request);
  // Calls `done` (on the engine thread) once the first token is sampled. The id cancels
  // the prefill (Cancel) while it runs; afterwards its KV is held under the lease.
  absl::StatusOr<RequestId> StartPrefill(
      const v1::PrefillRequest& request, std::optional<SteadyClock::time_point> deadline,
      std::function<void(absl::StatusOr<v1::PrefillResponse>)> done);
  std::unique_ptr<KvReceiver> NewKvReceiver() const;
  absl::StatusOr<v1::PushKvResponse> FinishPush(KvReceiver& receiver);
  // Blocks while the KV moves.
  absl::StatusOr<v1::TransferKvResponse> TransferKv(const v1::TransferKvRequest& request,
                                                    SteadyClock::time_point deadline);
  absl::Status ReleaseKv(const v1::ReleaseKvRequest& request);
  // The device transport's receiving side (decode workers with a KvLinkReceiver, which
  // must outlive the handler; without one these answer UNIMPLEMENTED).
  void set_kv_link_receiver(KvLinkReceiver* receiver) { link_receiver_ = receiver; }
  absl::StatusOr<v1::OpenKvLinkResponse> OpenKvLink(const v1::OpenKvLinkRequest& request,
                                                    SteadyClock::time_point deadline);
  // Claims pages for the reservation and posts the receives into them; returns the pages.
  absl::StatusOr<v1::PostKvReceiveResponse> PostKvReceive(const v1::PostKvReceiveRequest& request);
  // Blocks until the posted receive ends: OK once the reservation holds the KV.
  absl::StatusOr<v1::PushKvResponse> FinishKvReceive(const v1::FinishKvReceiveRequest& request,
                                                     SteadyClock::time_point deadline);
  absl::Status CloseKvLink(const v1::CloseKvLinkRequest& request);
  absl::StatusOr<RequestId> StartDecode(const v1::DecodeRequest& request,
                                        std::optional<SteadyClock::time_point> deadline,
                                        ResponseSink sink);
  v1::DrainResponse Drain();
  bool draining() const { return loop_->scheduler().draining(); }
  // Nothing queued, running, swapped, leased or reserved.
  bool Idle() const;

  // Converts and validates a request as StartGenerate would (exposed for tests).
  absl::StatusOr<GenerationRequest> ToRequest(
      const v1::GenerateRequest& request, std::optional<SteadyClock::time_point> deadline) const;

 private:
  absl::Status CheckRole(bool prefill_side) const;
  // Wraps a sink with the client-id bookkeeping and the metrics of one request.
  EngineLoop::EventSink StreamSink(std::string client_id, bool logprobs, ResponseSink sink);
  void Forget(const std::string& client_id);

  // A receive posted by PostKvReceive, until FinishKvReceive reads its outcome.
  struct PendingReceive {
    std::mutex mu;
    std::condition_variable done;
    std::optional<absl::Status> outcome;
    int64_t bytes = 0;
    uint64_t link_id = 0;
  };
  absl::Status CheckLinks() const;
  // Forgets the receive into `reservation` if it is `pending` (no other attempt's).
  void ForgetReceive(uint64_t reservation, const std::shared_ptr<PendingReceive>& pending);

  EngineLoop* loop_;
  WorkerIdentity identity_;
  KvTransport* transport_;
  WorkerMetrics* metrics_;
  KvLinkReceiver* link_receiver_ = nullptr;
  std::unique_ptr<EarlyKvPushes> early_pushes_;  // with a transport that can
  std::mutex receives_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<PendingReceive>> receives_;  // by reservation
  mutable std::mutex ids_mu_;
  std::unordered_map<std::string, RequestId> client_ids_;  // live requests by client id
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_WORKER_HANDLER_H_
