// Dtype names, sizes and quantized bit costs.
#include "estimator/dtype.h"

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

TEST(DTypeTest, BitsPerElement) {
  EXPECT_EQ(DTypeBits(DType::kFloat32), 32u);
  EXPECT_EQ(DTypeBits(DType::kBFloat16), 16u);
  EXPECT_EQ(DTypeBits(DType::kFloat16), 16u);
  EXPECT_EQ(DTypeBits(DType::kFp8), 8u);
  EXPECT_EQ(DTypeBits(DType::kInt8), 8u);
  EXPECT_EQ(DTypeBits(DType::kInt4), 4u);
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType d : {DType::kFloat32, DType::kBFloat16, DType::kFloat16,
                  DType::kFp8, DType::kInt8, DType::kInt4}) {
    absl::StatusOr<DType> parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
}

TEST(DTypeTest, HuggingFaceAndEngineSpellingsCaseInsensitive) {
  EXPECT_EQ(*ParseDType("bfloat16"), DType::kBFloat16);
  EXPECT_EQ(*ParseDType("BFloat16"), DType::kBFloat16);
  EXPECT_EQ(*ParseDType("float16"), DType::kFloat16);
  EXPECT_EQ(*ParseDType("half"), DType::kFloat16);
  EXPECT_EQ(*ParseDType("float32"), DType::kFloat32);
  EXPECT_EQ(*ParseDType("float"), DType::kFloat32);
  EXPECT_EQ(*ParseDType("fp8_e4m3"), DType::kFp8);
  EXPECT_EQ(*ParseDType("fp8_e5m2"), DType::kFp8);
  EXPECT_EQ(*ParseDType("float8_e4m3fn"), DType::kFp8);
  EXPECT_EQ(*ParseDType("nf4"), DType::kInt4);
}

TEST(DTypeTest, UnknownNameIsInvalidArgumentNamingIt) {
  absl::StatusOr<DType> d = ParseDType("fp7");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), testing::HasSubstr("fp7"));
  EXPECT_FALSE(ParseDType("").ok());
}

TEST(DTypeTest, QuantizedMicroBits) {
  Quantization gptq;
  gptq.dtype = DType::kInt4;
  gptq.group_size = 128;
  gptq.scale_bits = 16;
  gptq.zero_point_bits = 4;
  EXPECT_EQ(QuantizedWeightMicroBits(gptq), 4156250u);  // 4 + 20/128
  Quantization plain;
  plain.dtype = DType::kFp8;
  EXPECT_EQ(QuantizedWeightMicroBits(plain), 8000000u);
}

TEST(DTypeTest, BytesForMicroBitsRoundsUpAndDoesNotOverflow) {
  EXPECT_EQ(BytesForMicroBits(3, 4000000), 2u);     // 12 bits -> 2 bytes
  EXPECT_EQ(BytesForMicroBits(128, 4156250), 67u);  // 532 bits
  // 10^12 weights at 4.15625 bits: 4.15625e12 bits.
  EXPECT_EQ(BytesForMicroBits(1000000000000ull, 4156250), 4156250000000ull / 8);
  // 2^62 elements at 16 bits would overflow a naive count * micro_bits.
  EXPECT_EQ(BytesForMicroBits(uint64_t{1} << 58, 16000000), uint64_t{1} << 59);
}

}  // namespace
}  // namespace kvgate
