// Token embedding (a row gather) for the CUDA backend: out[r] = table[ids[r]], bf16 rows.
// Ids outside [0, table_rows) give rows of zeros (the engine validates ids before they
// reach a step). Streams travel as `void*`; pointers are device pointers.
#ifndef LSERVE_KERNELS_CUDA_EMBEDDING_H_
#define LSERVE_KERNELS_CUDA_EMBEDDING_H_

#include "absl/status/status.h"
#include "kernels/layer_params.h"

namespace lserve::cuda {

absl::Status Embedding(const EmbeddingParams& params, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_EMBEDDING_H_
