// Bytes of model weights on one GPU.
//
// Linear layers of the decoder are stored in the weight dtype (or quantized
// with group scales); embeddings, lm_head, norms and biases stay in 16 bits
// under quantization, as GPTQ, AWQ and bitsandbytes checkpoints keep them.
#ifndef KVGATE_ESTIMATOR_WEIGHTS_H_
#define KVGATE_ESTIMATOR_WEIGHTS_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "estimator/dtype.h"
#include "estimator/model_spec.h"
#include "estimator/parameters.h"

namespace kvgate {

struct WeightOptions {
  // Weight dtype; unset: the config's quantization, else its torch_dtype.
  // int4/int8/fp8 given here without a quantization_config assume the
  // common checkpoint layouts (see DefaultQuantization()).
  std::optional<DType> dtype;
  // Tensor-parallel degree: weights are split evenly across the GPUs.
  uint32_t tensor_parallel = 1;
  // Pipeline-parallel degree: layers are split evenly across stages.
  uint32_t pipeline_parallel = 1;
};

// The quantization a bare dtype implies: int4 -> group 128 with fp16 scales
// and 4-bit zero points (GPTQ/AWQ defaults); int8 and fp8 -> per-channel
// scales (negligible); 16/32-bit -> none.
Quantization DefaultQuantization(DType dtype);

// The quantization in effect for `spec` under `options`.
Quantization EffectiveQuantization(const ModelSpec& spec,
                                   const WeightOptions& options);

// Total weight bytes of the whole model (all GPUs together).
uint64_t TotalWeightBytes(const ModelSpec& spec, const ParameterCounts& params,
                          const Quantization& quantization);

// Weight bytes on one GPU. InvalidArgument for a zero parallel degree.
absl::StatusOr<uint64_t> WeightBytesPerGpu(const ModelSpec& spec,
                                           const ParameterCounts& params,
                                           const WeightOptions& options);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_WEIGHTS_H_
