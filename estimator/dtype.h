// Numeric formats of weights and KV cache, and their sizes.
//
// Sizes are in bits so that 4-bit formats are exact; byte counts are derived
// with RoundUpBits(). Quantized weight formats (GPTQ, AWQ, bitsandbytes NF4)
// add one scale (and for some a zero point) per group of weights: see
// QuantizedWeightBits().
#ifndef KVGATE_ESTIMATOR_DTYPE_H_
#define KVGATE_ESTIMATOR_DTYPE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvgate {

enum class DType { kFloat32, kBFloat16, kFloat16, kFp8, kInt8, kInt4 };

// Canonical short name: "fp32", "bf16", "fp16", "fp8", "int8", "int4".
absl::string_view DTypeName(DType dtype);

// Bits per element.
uint32_t DTypeBits(DType dtype);

// Parses a dtype name. Accepts the short names above and the spellings used
// in Hugging Face configs and serving flags ("float32", "bfloat16",
// "float16", "half", "float", "fp8_e4m3", "fp8_e5m2", "float8_e4m3fn",
// "int4", "nf4", ...). Case-insensitive. InvalidArgument names the value
// and lists the accepted ones.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// Weight quantization as read from `quantization_config` or chosen by flag.
struct Quantization {
  // Storage format of quantized linear weights.
  DType dtype = DType::kBFloat16;
  // Weights per scale group; 0 means one scale per output channel (fp8/int8
  // per-channel) or none.
  uint32_t group_size = 0;
  // Bits of each group's scale (fp16 scales: 16) and zero point (0: none).
  uint32_t scale_bits = 0;
  uint32_t zero_point_bits = 0;
  // "gptq", "awq", "bitsandbytes-nf4", "fp8", ... for display.
  const char* method = "none";
};

// Bits one quantized linear weight costs, scaled by 1e6 to stay integral:
// element bits plus the amortised scale and zero point of its group.
// Example: 4-bit GPTQ, group 128, fp16 scale, 4-bit zero point ->
// 4 + (16 + 4) / 128 = 4.15625 bits -> 4156250.
uint64_t QuantizedWeightMicroBits(const Quantization& q);

// Bytes to hold `count` elements of `bits_times_1e6 / 1e6` bits each,
// rounded up to a whole byte.
uint64_t BytesForMicroBits(uint64_t count, uint64_t micro_bits);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_DTYPE_H_
