#include "estimator/dtype.h"

#include <array>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

struct DTypeRow {
  DType dtype;
  absl::string_view name;
  uint32_t bits;
};

constexpr std::array<DTypeRow, 6> kDTypes = {{
    {DType::kFloat32, "fp32", 32},
    {DType::kBFloat16, "bf16", 16},
    {DType::kFloat16, "fp16", 16},
    {DType::kFp8, "fp8", 8},
    {DType::kInt8, "int8", 8},
    {DType::kInt4, "int4", 4},
}};

// Other spellings seen in Hugging Face configs (torch_dtype), vLLM flags
// (--dtype, --kv-cache-dtype) and quantization configs.
struct Alias {
  absl::string_view alias;
  DType dtype;
};
constexpr std::array<Alias, 16> kAliases = {{
    {"float32", DType::kFloat32},
    {"float", DType::kFloat32},
    {"f32", DType::kFloat32},
    {"bfloat16", DType::kBFloat16},
    {"float16", DType::kFloat16},
    {"half", DType::kFloat16},
    {"f16", DType::kFloat16},
    {"fp8_e4m3", DType::kFp8},
    {"fp8_e5m2", DType::kFp8},
    {"float8_e4m3fn", DType::kFp8},
    {"float8_e5m2", DType::kFp8},
    {"e4m3", DType::kFp8},
    {"i8", DType::kInt8},
    {"nf4", DType::kInt4},
    {"fp4", DType::kInt4},
    {"i4", DType::kInt4},
}};

}  // namespace

absl::string_view DTypeName(DType dtype) {
  for (const DTypeRow& row : kDTypes) {
    if (row.dtype == dtype) return row.name;
  }
  return "unknown";
}

uint32_t DTypeBits(DType dtype) {
  for (const DTypeRow& row : kDTypes) {
    if (row.dtype == dtype) return row.bits;
  }
  return 0;
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const DTypeRow& row : kDTypes) {
    if (row.name == lower) return row.dtype;
  }
  for (const Alias& alias : kAliases) {
    if (alias.alias == lower) return alias.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype '", name,
      "'; expected one of fp32, bf16, fp16, fp8, int8, int4 (or float32, "
      "bfloat16, float16, half, float8_e4m3fn, nf4)"));
}

uint64_t QuantizedWeightMicroBits(const Quantization& q) {
  uint64_t micro_bits = uint64_t{DTypeBits(q.dtype)} * 1000000;
  if (q.group_size > 0) {
    micro_bits +=
        (uint64_t{q.scale_bits} + q.zero_point_bits) * 1000000 / q.group_size;
  }
  return micro_bits;
}

uint64_t BytesForMicroBits(uint64_t count, uint64_t micro_bits) {
  // count * micro_bits can exceed 64 bits for huge models; split it.
  const uint64_t whole_bits = micro_bits / 1000000;
  const uint64_t frac_micro = micro_bits % 1000000;
  const uint64_t bits = count * whole_bits + (count / 1000000) * frac_micro +
                        ((count % 1000000) * frac_micro + 999999) / 1000000;
  return (bits + 7) / 8;
}

}  // namespace kvgate
