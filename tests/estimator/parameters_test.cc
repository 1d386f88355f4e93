// Exact parameter counts (tests/data/models/facts.json) and weight bytes
// under quantization, computed by hand.
#include "estimator/parameters.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "estimator/kv_cache.h"
#include "estimator/model_spec.h"
#include "estimator/weights.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

std::string DataPath(const std::string& relative) {
  return std::string(KVGATE_TEST_DATA_DIR) + "/" + relative;
}

struct Fact {
  std::string model;
  uint64_t parameters = 0;
  uint64_t active_parameters = 0;
  uint64_t kv_bytes_per_token_16bit = 0;
};

std::vector<Fact> LoadFacts() {
  std::ifstream in(DataPath("models/facts.json"));
  std::ostringstream text;
  text << in.rdbuf();
  const nlohmann::json root = nlohmann::json::parse(text.str());
  std::vector<Fact> facts;
  for (const auto& [model, f] : root.items()) {
    facts.push_back({model, f.at("parameters").get<uint64_t>(),
                     f.at("active_parameters").get<uint64_t>(),
                     f.at("kv_cache_bytes_per_token_16bit").get<uint64_t>()});
  }
  return facts;
}

std::string FactName(const testing::TestParamInfo<Fact>& info) {
  std::string name = info.param.model;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

class FactsTest : public testing::TestWithParam<Fact> {
 protected:
  ModelSpec Spec() const {
    absl::StatusOr<ModelSpec> spec =
        LoadModelConfig(DataPath("models/" + GetParam().model + ".json"));
    EXPECT_TRUE(spec.ok()) << spec.status();
    return spec.ok() ? *spec : ModelSpec();
  }
};

TEST(FactsFileTest, HoldsTheTenModels) { EXPECT_EQ(LoadFacts().size(), 10u); }

TEST_P(FactsTest, ParametersExact) {
  EXPECT_EQ(CountParameters(Spec()).total, GetParam().parameters);
}

TEST_P(FactsTest, ActiveParametersExact) {
  EXPECT_EQ(CountParameters(Spec()).active, GetParam().active_parameters);
}

TEST_P(FactsTest, KvCacheBytesPerToken16BitExact) {
  KvCacheOptions options;
  options.dtype = DType::kBFloat16;
  absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(Spec(), options);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(kv->bytes_per_token(), GetParam().kv_bytes_per_token_16bit);
}

TEST_P(FactsTest, PartsAddUpAndActiveNeverExceedsTotal) {
  const ParameterCounts c = CountParameters(Spec());
  EXPECT_EQ(c.embedding + c.lm_head + c.linear + c.other, c.total);
  EXPECT_LE(c.active, c.total);
  EXPECT_LE(c.linear_active, c.linear);
}

INSTANTIATE_TEST_SUITE_P(Models, FactsTest, testing::ValuesIn(LoadFacts()),
                         FactName);

// A small Llama-like model whose counts are easy to check by hand:
// hidden 256, 2 layers, 4 heads (head_dim 64), 2 KV heads, MLP 512,
// vocab 1000, untied.
constexpr char kSmall[] = R"({"model_type": "llama", "hidden_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
    "torch_dtype": "bfloat16")";

ModelSpec Small(const std::string& quantization = "") {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      std::string(kSmall) +
      (quantization.empty() ? ""
                            : ", \"quantization_config\": " + quantization) +
      "}");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// Linear weights: per layer q 256x256 + k,v 256x128 each + o 256x256 +
// 3 x 256x512 = 65536 + 65536 + 65536 + 393216 = 589824; 2 layers: 1179648.
constexpr uint64_t kSmallLinear = 1179648;
// Embedding and lm_head 2 x 256000, norms (2 x 2 + 1) x 256 = 1280.
constexpr uint64_t kSmallOther = 512000 + 1280;

TEST(ParametersTest, SmallModelByHand) {
  const ParameterCounts c = CountParameters(Small());
  EXPECT_EQ(c.linear, kSmallLinear);
  EXPECT_EQ(c.total, kSmallLinear + kSmallOther);
  EXPECT_EQ(TotalWeightBytes(Small(), c, DefaultQuantization(DType::kBFloat16)),
            2 * (kSmallLinear + kSmallOther));
}

uint64_t WeightBytes(const ModelSpec& spec) {
  return TotalWeightBytes(spec, CountParameters(spec),
                          EffectiveQuantization(spec, WeightOptions()));
}

TEST(WeightsTest, Gptq4BitGroup128) {
  // 4-bit weights + per 128 weights an fp16 scale and a 4-bit zero point:
  // 4 + 20/128 bits each; the rest stays 16-bit.
  const ModelSpec spec =
      Small(R"({"quant_method": "gptq", "bits": 4, "group_size": 128})");
  const uint64_t bits = kSmallLinear * 4 + kSmallLinear / 128 * (16 + 4);
  EXPECT_EQ(WeightBytes(spec), bits / 8 + 2 * kSmallOther);
}

TEST(WeightsTest, AwqReadsWBitAndQGroupSize) {
  const ModelSpec spec =
      Small(R"({"quant_method": "awq", "w_bit": 4, "q_group_size": 64})");
  const uint64_t bits = kSmallLinear * 4 + kSmallLinear / 64 * (16 + 4);
  EXPECT_EQ(WeightBytes(spec), bits / 8 + 2 * kSmallOther);
}

TEST(WeightsTest, BitsAndBytesNf4WithoutDoubleQuant) {
  // NF4: 4 bits each, an fp32 absmax per block of 64.
  const ModelSpec spec = Small(
      R"({"quant_method": "bitsandbytes", "load_in_4bit": true,
          "bnb_4bit_quant_type": "nf4"})");
  const uint64_t bits = kSmallLinear * 4 + kSmallLinear / 64 * 32;
  EXPECT_EQ(WeightBytes(spec), bits / 8 + 2 * kSmallOther);
}

TEST(WeightsTest, BitsAndBytesNf4WithDoubleQuant) {
  // Double quantization stores each block's absmax in 8 bits.
  const ModelSpec spec = Small(
      R"({"quant_method": "bitsandbytes", "load_in_4bit": true,
          "bnb_4bit_use_double_quant": true})");
  const uint64_t bits = kSmallLinear * 4 + kSmallLinear / 64 * 8;
  EXPECT_EQ(WeightBytes(spec), bits / 8 + 2 * kSmallOther);
}

TEST(WeightsTest, BitsAndBytesInt8) {
  const ModelSpec spec =
      Small(R"({"quant_method": "bitsandbytes", "load_in_8bit": true})");
  EXPECT_EQ(WeightBytes(spec), kSmallLinear + 2 * kSmallOther);
}

TEST(WeightsTest, Fp8Block128x128) {
  // 1 byte each plus an fp32 scale per 128 x 128 block.
  const ModelSpec spec =
      Small(R"({"quant_method": "fp8", "weight_block_size": [128, 128]})");
  const uint64_t bits = kSmallLinear * 8 + kSmallLinear * 32 / (128 * 128);
  EXPECT_EQ(WeightBytes(spec), bits / 8 + 2 * kSmallOther);
}

TEST(WeightsTest, Fp32CheckpointIsFourBytesPerParameter) {
  const ModelSpec spec =
      *ParseModelConfig(std::string(kSmall) + R"(, "torch_dtype": "float32"})");
  EXPECT_EQ(WeightBytes(spec), 4 * (kSmallLinear + kSmallOther));
}

TEST(WeightsTest, TensorAndPipelineParallelSplitEvenly) {
  const ModelSpec spec = Small();
  WeightOptions options;
  options.tensor_parallel = 2;
  options.pipeline_parallel = 2;
  absl::StatusOr<uint64_t> bytes =
      WeightBytesPerGpu(spec, CountParameters(spec), options);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, (2 * (kSmallLinear + kSmallOther) + 3) / 4);
  options.tensor_parallel = 0;
  EXPECT_FALSE(WeightBytesPerGpu(spec, CountParameters(spec), options).ok());
}

TEST(WeightsTest, BareInt4DtypeAssumesGroup128) {
  const ModelSpec spec = Small();
  WeightOptions options;
  options.dtype = DType::kInt4;
  const Quantization q = EffectiveQuantization(spec, options);
  EXPECT_EQ(q.group_size, 128u);
  EXPECT_EQ(TotalWeightBytes(spec, CountParameters(spec), q),
            (kSmallLinear * 4 + kSmallLinear / 128 * 20) / 8 + 2 * kSmallOther);
}

}  // namespace
}  // namespace kvgate
