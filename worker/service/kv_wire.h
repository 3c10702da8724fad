// A KvSnapshot on the wire (lserve.v1.KvHeader + data chunks): building the header with
// its checksum, cutting the bytes into chunks, and receiving them back with every size
// and the checksum verified, so a truncated or corrupted stream is refused whole.
#ifndef LSERVE_WORKER_SERVICE_KV_WIRE_H_
#define LSERVE_WORKER_SERVICE_KV_WIRE_H_

#include <cstdint>
#include <functional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstore/kv_snapshot.h"
#include "lserve/v1/worker.pb.h"

namespace lserve {

// 64-bit checksum of byte runs, continued across calls (8 bytes a step).
class KvChecksum {
 public:
  void Update(std::string_view bytes);
  uint64_t value() const;

 private:
  uint64_t state_ = 0x84222325cbf29ce4ull;
  uint64_t length_ = 0;
  uint64_t tail_ = 0;
  int tail_bytes_ = 0;
};

v1::KvHeader KvHeaderFor(const KvSnapshot& snapshot, uint64_t reservation_id);
// The snapshot a header describes, without bytes (sizes unchecked: the store checks).
absl::StatusOr<KvSnapshot> ManifestFromHeader(const v1::KvHeader& header);

// Calls fn with consecutive pieces of at most chunk_bytes of the snapshot's bytes (dense,
// then streaming); stops at the first error.
absl::Status ForEachKvChunk(const KvSnapshot& snapshot, size_t chunk_bytes,
                            const std::function<absl::Status(std::string_view)>& fn);

class KvReceiver {
 public:
  // max_bytes bounds what a header may announce.
  explicit KvReceiver(int64_t max_bytes) : max_bytes_(max_bytes) {}
  absl::Status OnHeader(const v1::KvHeader& header);
  absl::Status OnData(std::string_view data);
  // The snapshot once every announced byte arrived and the checksum matches.
  absl::StatusOr<KvSnapshot> Finish();
  uint64_t reservation_id() const { return reservation_id_; }
  int64_t received() const { return received_; }

 private:
  int64_t max_bytes_;
  bool have_header_ = false;
  uint64_t reservation_id_ = 0;
  uint64_t expected_checksum_ = 0;
  KvSnapshot snapshot_;
  int64_t received_ = 0;
  int64_t dense_target_ = 0;
  int64_t streaming_target_ = 0;
  KvChecksum checksum_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_KV_WIRE_H_
