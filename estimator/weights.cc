#include "estimator/weights.h"

#include "absl/status/status.h"

namespace kvgate {

Quantization DefaultQuantization(DType dtype) {
  Quantization q;
  q.dtype = dtype;
  switch (dtype) {
    case DType::kInt4:
      // GPTQ and AWQ defaults: groups of 128, fp16 scale, 4-bit zero point.
      q.group_size = 128;
      q.scale_bits = 16;
      q.zero_point_bits = 4;
      q.method = "int4-g128";
      break;
    case DType::kInt8:
      q.method = "int8";
      break;
    case DType::kFp8:
      q.method = "fp8";
      break;
    default:
      q.method = "none";
      break;
  }
  return q;
}

Quantization EffectiveQuantization(const ModelSpec& spec,
                                   const WeightOptions& options) {
  if (options.dtype.has_value()) {
    if (spec.quantization.has_value() &&
        spec.quantization->dtype == *options.dtype) {
      return *spec.quantization;
    }
    return DefaultQuantization(*options.dtype);
  }
  if (spec.quantization.has_value()) return *spec.quantization;
  return DefaultQuantization(spec.torch_dtype);
}

uint64_t TotalWeightBytes(const ModelSpec& spec, const ParameterCounts& params,
                          const Quantization& q) {
  (void)spec;
  const uint32_t bits = DTypeBits(q.dtype);
  if (bits >= 16) return params.total * (bits / 8);
  // Quantized: decoder linear weights in the quantized format, everything
  // else (embeddings, lm_head, norms, biases, routers) in 16 bits.
  const uint64_t unquantized = params.total - params.linear;
  return BytesForMicroBits(params.linear, QuantizedWeightMicroBits(q)) +
         unquantized * 2;
}

absl::StatusOr<uint64_t> WeightBytesPerGpu(const ModelSpec& spec,
                                           const ParameterCounts& params,
                                           const WeightOptions& options) {
  if (options.tensor_parallel == 0 || options.pipeline_parallel == 0) {
    return absl::InvalidArgumentError(
        "tensor and pipeline parallel degrees must be at least 1");
  }
  const uint64_t total =
      TotalWeightBytes(spec, params, EffectiveQuantization(spec, options));
  const uint64_t gpus =
      uint64_t{options.tensor_parallel} * options.pipeline_parallel;
  return (total + gpus - 1) / gpus;
}

}  // namespace kvgate
