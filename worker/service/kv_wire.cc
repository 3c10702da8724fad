#include "worker/service/kv_wire.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace lserve {
namespace {

constexpr uint64_t kPrime = 0x9E3779B97F4A7C15ull;

uint64_t Mix(uint64_t h, uint64_t word) {
  h ^= word;
  h *= kPrime;
  return h ^ (h >> 29);
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("KV header: unknown dtype '", name, "'"));
}

}  // namespace

void KvChecksum::Update(std::string_view bytes) {
  length_ += bytes.size();
  size_t i = 0;
  // Finish a word left incomplete by the previous call.
  while (tail_bytes_ > 0 && tail_bytes_ < 8 && i < bytes.size()) {
    tail_ |= uint64_t{static_cast<uint8_t>(bytes[i++])} << (8 * tail_bytes_++);
  }
  if (tail_bytes_ == 8) {
    state_ = Mix(state_, tail_);
    tail_ = 0;
    tail_bytes_ = 0;
  }
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    state_ = Mix(state_, word);
  }
  for (; i < bytes.size(); ++i) {
    tail_ |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * tail_bytes_++);
  }
}

uint64_t KvChecksum::value() const {
  uint64_t h = tail_bytes_ > 0 ? Mix(state_, tail_) : state_;
  return Mix(h, length_);
}

v1::KvHeader KvHeaderFor(const KvSnapshot& s, uint64_t reservation_id) {
  v1::KvHeader header;
  header.set_reservation_id(reservation_id);
  header.set_num_layers(s.shape.num_layers);
  header.set_num_kv_heads(s.shape.num_kv_heads);
  header.set_head_dim(s.shape.head_dim);
  header.set_page_size(s.shape.page_size);
  header.set_logical_page_size(s.shape.logical_page_size);
  header.set_dtype(std::string(DTypeName(s.shape.dtype)));
  header.set_streaming_heads(std::string(s.shape.streaming.begin(), s.shape.streaming.end()));
  header.set_sink(s.shape.sink);
  header.set_prefill_local(s.shape.prefill_local);
  header.set_decode_local(s.shape.decode_local);
  header.set_max_chunk_tokens(s.shape.max_chunk_tokens);
  header.set_length(s.length);
  header.set_decoding(s.decoding);
  header.set_num_dense_pages(s.num_dense_pages);
  for (int64_t index : s.streaming_indices) header.add_streaming_indices(index);
  header.set_dense_bytes(static_cast<int64_t>(s.dense_bytes.size()));
  header.set_streaming_bytes(static_cast<int64_t>(s.streaming_bytes.size()));
  KvChecksum checksum;
  checksum.Update({reinterpret_cast<const char*>(s.dense_bytes.data()), s.dense_bytes.size()});
  checksum.Update(
      {reinterpret_cast<const char*>(s.streaming_bytes.data()), s.streaming_bytes.size()});
  header.set_checksum(checksum.value());
  return header;
}

absl::Status ForEachKvChunk(const KvSnapshot& snapshot, size_t chunk_bytes,
                            const std::function<absl::Status(std::string_view)>& fn) {
  for (const std::vector<uint8_t>* bytes : {&snapshot.dense_bytes, &snapshot.streaming_bytes}) {
    for (size_t offset = 0; offset < bytes->size(); offset += chunk_bytes) {
      const size_t n = std::min(chunk_bytes, bytes->size() - offset);
      if (absl::Status s = fn({reinterpret_cast<const char*>(bytes->data()) + offset, n});
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<KvSnapshot> ManifestFromHeader(const v1::KvHeader& h) {
  KvSnapshot snapshot;
  KvShape& shape = snapshot.shape;
  shape.num_layers = h.num_layers();
  shape.num_kv_heads = h.num_kv_heads();
  shape.head_dim = h.head_dim();
  shape.page_size = h.page_size();
  shape.logical_page_size = h.logical_page_size();
  absl::StatusOr<DType> dtype = ParseDType(h.dtype());
  if (!dtype.ok()) return dtype.status();
  shape.dtype = *dtype;
  shape.streaming.assign(h.streaming_heads().begin(), h.streaming_heads().end());
  shape.sink = h.sink();
  shape.prefill_local = h.prefill_local();
  shape.decode_local = h.decode_local();
  shape.max_chunk_tokens = h.max_chunk_tokens();
  snapshot.length = h.length();
  snapshot.decoding = h.decoding();
  snapshot.num_dense_pages = h.num_dense_pages();
  snapshot.streaming_indices.assign(h.streaming_indices().begin(), h.streaming_indices().end());
  return snapshot;
}

absl::Status KvReceiver::OnHeader(const v1::KvHeader& h) {
  if (have_header_) return absl::InvalidArgumentError("KV stream: a second header");
  if (h.dense_bytes() < 0 || h.streaming_bytes() < 0 || h.length() < 0 || h.num_dense_pages() < 0 ||
      h.dense_bytes() + h.streaming_bytes() > max_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV stream: header announces ", h.dense_bytes() + h.streaming_bytes(),
                     " bytes, at most ", max_bytes_, " are accepted"));
  }
  absl::StatusOr<KvSnapshot> manifest = ManifestFromHeader(h);
  if (!manifest.ok()) return manifest.status();
  snapshot_ = *std::move(manifest);
  snapshot_.dense_bytes.reserve(h.dense_bytes());
  snapshot_.streaming_bytes.reserve(h.streaming_bytes());
  reservation_id_ = h.reservation_id();
  expected_checksum_ = h.checksum();
  dense_target_ = h.dense_bytes();
  streaming_target_ = h.streaming_bytes();
  have_header_ = true;
  return absl::OkStatus();
}

absl::Status KvReceiver::OnData(std::string_view data) {
  if (!have_header_) return absl::InvalidArgumentError("KV stream: data before the header");
  if (received_ + static_cast<int64_t>(data.size()) > dense_target_ + streaming_target_) {
    return absl::InvalidArgumentError("KV stream: more bytes than the header announced");
  }
  checksum_.Update(data);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(data.data());
  // Dense bytes come first, then streaming; a chunk may straddle the two.
  const int64_t to_dense =
      std::max<int64_t>(0, std::min<int64_t>(dense_target_ - received_, data.size()));
  snapshot_.dense_bytes.insert(snapshot_.dense_bytes.end(), bytes, bytes + to_dense);
  snapshot_.streaming_bytes.insert(snapshot_.streaming_bytes.end(), bytes + to_dense,
                                   bytes + data.size());
  received_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<KvSnapshot> KvReceiver::Finish() {
  if (!have_header_) return absl::InvalidArgumentError("KV stream: no header");
  if (received_ != dense_target_ + streaming_target_) {
    return absl::DataLossError(absl::StrCat("KV stream cut off: ", received_, " of ",
                                            dense_target_ + streaming_target_, " bytes arrived"));
  }
  if (checksum_.value() != expected_checksum_) {
    return absl::DataLossError("KV stream: checksum mismatch, the bytes were corrupted");
  }
  return std::move(snapshot_);
}

}  // namespace lserve
