// A batch's page tables as plain int32 arrays in CSR form, the one format every kernel
// and every KV transfer reads (as FlashInfer's paged_kv_t). Sequence b of the batch:
//
//  * dense pool: dense_indices[dense_indptr[b] .. dense_indptr[b+1]) are its pages in
//    order; page i holds positions [i*P, (i+1)*P), the last one dense_last_page_len[b]
//    tokens;
//  * streaming pool: stream_indices[stream_indptr[b] ..] holds first its
//    stream_sink_pages[b] sink pages (page i holds positions [i*P, (i+1)*P)), then its
//    ring slots. Ring page lp holds positions [ring_start + lp*P, ring_start + (lp+1)*P)
//    and lives in slot lp % (number of slots); slots whose page is absent hold -1.
//
// kv_len[b] is the number of tokens the sequence holds once the step's tokens are in.
#ifndef LSERVE_KVSTORE_PAGE_TABLE_ARRAYS_H_
#define LSERVE_KVSTORE_PAGE_TABLE_ARRAYS_H_

#include <cstdint>
#include <vector>

namespace lserve {

struct PageTableArrays {
  int32_t page_size = 0;
  int32_t ring_start = 0;  // first position the ring stores (the sink pages hold the rest)
  std::vector<int32_t> kv_len;
  std::vector<int32_t> dense_indptr;
  std::vector<int32_t> dense_indices;
  std::vector<int32_t> dense_last_page_len;
  std::vector<int32_t> stream_indptr;
  std::vector<int32_t> stream_indices;
  std::vector<int32_t> stream_sink_pages;

  int num_seqs() const { return static_cast<int>(kv_len.size()); }
  void Clear();
};

inline void PageTableArrays::Clear() {
  kv_len.clear();
  dense_indptr.assign(1, 0);
  dense_indices.clear();
  dense_last_page_len.clear();
  stream_indptr.assign(1, 0);
  stream_indices.clear();
  stream_sink_pages.clear();
}

}  // namespace lserve

#endif  // LSERVE_KVSTORE_PAGE_TABLE_ARRAYS_H_
