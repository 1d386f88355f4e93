#include "estimator/kv_cache.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvgate {

absl::StatusOr<KvCacheModel> KvCacheModel::Create(
    const ModelSpec& spec, const KvCacheOptions& options) {
  if (options.block_size == 0) {
    return absl::InvalidArgumentError("block size must be at least 1 token");
  }
  if (options.tensor_parallel == 0) {
    return absl::InvalidArgumentError("tensor parallel degree must be >= 1");
  }
  KvCacheModel m;
  if (options.dtype.has_value()) {
    m.dtype_ = *options.dtype;
  } else {
    // "auto": the checkpoint's 16-bit dtype; fp32 and quantized checkpoints
    // are served with a 16-bit cache.
    m.dtype_ = spec.torch_dtype == DType::kFloat16 ? DType::kFloat16
                                                   : DType::kBFloat16;
  }
  const uint32_t bits = DTypeBits(m.dtype_);
  if (bits < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV-cache dtype ", DTypeName(m.dtype_),
                     " is not supported; use fp32, bf16, fp16 or fp8"));
  }
  const uint64_t bytes = bits / 8;
  const uint64_t tp = options.tensor_parallel;
  if (spec.attention_kind == AttentionKind::kMultiLatent) {
    // The latent is shared by all heads and replicated on every GPU.
    m.kv_heads_per_gpu_ = 1;
    m.layer_bytes_per_token_ =
        (spec.kv_lora_rank + spec.qk_rope_head_dim) * bytes;
  } else {
    const uint64_t heads = spec.num_kv_heads;
    if (heads >= tp && heads % tp != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor parallel degree ", tp, " does not divide the ",
                       heads, " KV heads"));
    }
    if (heads < tp && tp % heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor parallel degree ", tp, " is not a multiple of the ", heads,
          " KV heads they would be replicated across"));
    }
    // Fewer heads than GPUs: each GPU keeps a replica of one head.
    m.kv_heads_per_gpu_ = heads >= tp ? heads / tp : 1;
    m.layer_bytes_per_token_ = 2 * m.kv_heads_per_gpu_ * spec.head_dim * bytes;
  }
  m.block_size_ = options.block_size;
  if (options.honor_sliding_window && spec.num_sliding_layers > 0 &&
      spec.sliding_window > 0) {
    m.sliding_layers_ = spec.num_sliding_layers;
    m.window_ = spec.sliding_window;
  }
  m.full_layers_ = spec.num_layers - m.sliding_layers_;
  return m;
}

}  // namespace kvgate
