#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tools/model_flags.h"

namespace kvgate {

void ModelFlags::Register(FlagSet& flags) {
  flags.AddString("config", &config,
                  absl::StrCat("Hugging Face config.json path, or a preset: ",
                               absl::StrJoin(PresetNames(), ", ")));
  flags.AddString("dtype", &dtype,
                  "weight dtype: fp32, bf16, fp16, fp8, int8, int4 (default: "
                  "the config's quantization or torch_dtype)");
  flags.AddString("kv-cache-dtype", &kv_cache_dtype,
                  "KV-cache dtype: auto, bf16, fp16, fp8, fp32");
  flags.AddUint64("tensor-parallel", &tensor_parallel,
                  "GPUs the model is split across (tensor parallelism)");
  flags.AddUint64("block-size", &block_size,
                  "paged KV-cache block size in tokens");
  flags.AddString("attention", &attention,
                  "attention implementation: flash or eager");
  flags.AddUint64("chunked-prefill-tokens", &chunked_prefill_tokens,
                  "tokens per prefill step, as vLLM V1 chunks prefill (the "
                  "default is vLLM's --max-num-batched-tokens; 0: off, the "
                  "whole prompt in one step)");
  flags.AddBool("json", &json, "print one JSON object");
}

absl::Status CheckRange(absl::string_view flag, uint64_t value, uint64_t min,
                        uint64_t max) {
  if (value < min || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, "=", value, " is out of range [", min, ", ", max, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelSpec> ModelFlags::LoadSpec() const {
  if (config.empty()) {
    return absl::InvalidArgumentError(
        "--config is required (a config.json path or a preset name)");
  }
  return LoadModel(config);
}

absl::StatusOr<ServingOptions> ModelFlags::ToServingOptions() const {
  ServingOptions o;
  if (!dtype.empty()) {
    absl::StatusOr<DType> d = ParseDType(dtype);
    if (!d.ok()) return d.status();
    o.weight_dtype = *d;
  }
  if (kv_cache_dtype != "auto") {
    absl::StatusOr<DType> d = ParseDType(kv_cache_dtype);
    if (!d.ok()) return d.status();
    o.kv_cache_dtype = *d;
  }
  if (absl::Status s = CheckRange("tensor-parallel", tensor_parallel, 1, 4096);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("block-size", block_size, 1, 1 << 20);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("chunked-prefill-tokens",
                                  chunked_prefill_tokens, 0, 1ull << 32);
      !s.ok()) {
    return s;
  }
  o.tensor_parallel = static_cast<uint32_t>(tensor_parallel);
  o.block_size = static_cast<uint32_t>(block_size);
  o.chunked_prefill_tokens = static_cast<uint32_t>(chunked_prefill_tokens);
  if (attention == "flash") {
    o.attention = AttentionImpl::kFlash;
  } else if (attention == "eager") {
    o.attention = AttentionImpl::kEager;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--attention=", attention, ": expected flash or eager"));
  }
  return o;
}

}  // namespace kvgate
