// A server stream of lserve.v1.GenerateResponse fed from another thread (the worker's
// engine thread, or a router's request thread). Writes go out one at a time; responses
// queued meanwhile are merged, so a slow client costs one message per write rather than
// one per token. The reactor deletes itself in OnDone; producers only touch a shared
// part that outlives it, and a client that goes away runs the canceller.
#ifndef LSERVE_NET_GENERATE_STREAM_REACTOR_H_
#define LSERVE_NET_GENERATE_STREAM_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.pb.h"

namespace lserve::net {

// How long a client told RESOURCE_EXHAUSTED should wait before retrying.
inline constexpr int kRetryPushbackMs = 1000;

// Adds the retry hint to a call that ends with `status` when it is RESOURCE_EXHAUSTED.
void AddRetryHint(grpc::CallbackServerContext* context, const absl::Status& status);

// Takes the stream's responses; `final` marks the last one, with the stream's outcome.
using GenerateSink =
    std::function<void(const v1::GenerateResponse& response, bool final, const absl::Status&)>;

class GenerateStreamReactor : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // start begins the work with a sink and returns how to cancel it, or an error that
  // ends the stream at once.
  using Start = std::function<absl::StatusOr<std::function<void()>>(GenerateSink)>;
  // With the call's context, a RESOURCE_EXHAUSTED outcome carries the trailer
  // "grpc-retry-pushback-ms" (gRPC's retry hint) so clients know when to come back.
  explicit GenerateStreamReactor(const Start& start,
                                 grpc::CallbackServerContext* context = nullptr);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Shared {
    std::mutex mu;
    GenerateStreamReactor* reactor = nullptr;
    grpc::CallbackServerContext* context = nullptr;  // valid while reactor is
    std::deque<v1::GenerateResponse> queue;
    v1::GenerateResponse writing_now;
    bool writing = false;
    bool final = false;
    bool finishing = false;
    grpc::Status status;
  };
  static void Push(Shared& shared, const v1::GenerateResponse& response, bool final,
                   const absl::Status& status);
  // Called with the lock held; releases it before calling into gRPC.
  static void WriteNext(Shared& shared, std::unique_lock<std::mutex>& lock);

  std::shared_ptr<Shared> shared_;
  std::function<void()> cancel_;
  bool started_ = false;
  bool cancelled_ = false;
};

}  // namespace lserve::net

#endif  // LSERVE_NET_GENERATE_STREAM_REACTOR_H_
