// Newer model families checked against real public config.json files
// (tests/data/models/extra/, trimmed to the memory-relevant fields) and the
// parameter counts their authors published (extra/facts.json records each
// figure, its rounding and its source). Exact figures must match exactly;
// rounded ones within half a unit of their last digit.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "estimator/kv_cache.h"
#include "estimator/model_spec.h"
#include "estimator/parameters.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

std::string ExtraPath(const std::string& file) {
  return std::string(KVGATE_TEST_DATA_DIR) + "/models/extra/" + file;
}

struct PublishedFigure {
  std::string model;
  std::string quantity;  // "total", "active" or "non_embedding"
  double value = 0;
  double plus_minus = 0;   // 0: exact
  bool truncated = false;  // the exact count is in [value, value + 2 x pm)
};

std::vector<PublishedFigure> LoadFigures() {
  std::ifstream in(ExtraPath("facts.json"));
  std::ostringstream text;
  text << in.rdbuf();
  const nlohmann::json root = nlohmann::json::parse(text.str());
  std::vector<PublishedFigure> figures;
  for (const auto& [model, entry] : root.items()) {
    if (model == "_about") continue;
    for (const char* quantity : {"total", "active", "non_embedding"}) {
      if (!entry.contains(quantity)) continue;
      const nlohmann::json& f = entry.at(quantity);
      figures.push_back({model, quantity, f.at("value").get<double>(),
                         f.at("plus_minus").get<double>(),
                         f.value("truncated", false)});
    }
  }
  return figures;
}

std::string FigureName(const testing::TestParamInfo<PublishedFigure>& info) {
  std::string name = info.param.model + "_" + info.param.quantity;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

ModelSpec Load(const std::string& model) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(ExtraPath(model + ".json"));
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

class PublishedCountTest : public testing::TestWithParam<PublishedFigure> {};

TEST_P(PublishedCountTest, MatchesWithinThePublishedRounding) {
  const PublishedFigure& figure = GetParam();
  const ParameterCounts c = CountParameters(Load(figure.model));
  uint64_t ours = c.total;
  if (figure.quantity == "active") ours = c.active;
  if (figure.quantity == "non_embedding") {
    ours = c.total - c.embedding - c.lm_head;
  }
  std::printf("EXTRA %s %s ours %llu published %.0f +- %.0f\n",
              figure.model.c_str(), figure.quantity.c_str(),
              static_cast<unsigned long long>(ours), figure.value,
              figure.plus_minus);
  if (figure.plus_minus == 0) {
    EXPECT_EQ(ours, static_cast<uint64_t>(figure.value));
  } else if (figure.truncated) {
    EXPECT_GE(static_cast<double>(ours), figure.value);
    EXPECT_LT(static_cast<double>(ours), figure.value + 2 * figure.plus_minus);
  } else {
    EXPECT_NEAR(static_cast<double>(ours), figure.value, figure.plus_minus);
  }
}

INSTANTIATE_TEST_SUITE_P(Extra, PublishedCountTest,
                         testing::ValuesIn(LoadFigures()), FigureName);

TEST(ExtraFamiliesTest, Qwen3HasQkNormAndNoBias) {
  const ModelSpec spec = Load("Qwen3-8B");
  EXPECT_TRUE(spec.known_family);
  EXPECT_TRUE(spec.qk_norm);
  EXPECT_FALSE(spec.qkv_bias);
  EXPECT_EQ(spec.num_sliding_layers, 0u);  // sliding_window: null
}

TEST(ExtraFamiliesTest, Qwen3MoeRoutesEveryLayerWithoutSharedExpert) {
  const ModelSpec spec = Load("Qwen3-30B-A3B");
  EXPECT_EQ(spec.num_moe_layers, 48u);
  EXPECT_EQ(spec.num_experts, 128u);
  EXPECT_EQ(spec.experts_per_token, 8u);
  EXPECT_EQ(spec.shared_expert_intermediate_size, 0u);
  EXPECT_FALSE(spec.shared_expert_gate);
}

TEST(ExtraFamiliesTest, Qwen2MoeHasAGatedSharedExpert) {
  const ModelSpec spec = Load("Qwen1.5-MoE-A2.7B");
  EXPECT_EQ(spec.shared_expert_intermediate_size, 5632u);
  EXPECT_TRUE(spec.shared_expert_gate);
  EXPECT_TRUE(spec.qkv_bias);
}

TEST(ExtraFamiliesTest, Gemma3SparseTextConfigTakesTheFamilyDefaults) {
  const ModelSpec spec = Load("gemma-3-4b-it");
  EXPECT_EQ(spec.model_type, "gemma3_text");
  EXPECT_EQ(spec.vocab_size, 262208u);
  EXPECT_EQ(spec.num_attention_heads, 8u);
  EXPECT_EQ(spec.num_kv_heads, 4u);
  EXPECT_EQ(spec.head_dim, 256u);
  EXPECT_TRUE(spec.tie_word_embeddings);
  // Five local layers (window 1024) for each global one: 34 - 34/6 = 29.
  EXPECT_EQ(spec.sliding_window, 1024u);
  EXPECT_EQ(spec.num_sliding_layers, 29u);
}

TEST(ExtraFamiliesTest, Gemma3KvCacheCapsLocalLayers) {
  const ModelSpec spec = Load("gemma-3-12b-it");
  KvCacheOptions options;
  options.block_size = 1;
  absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(spec, options);
  ASSERT_TRUE(kv.ok());
  const uint64_t layer = 2 * 8 * 256 * 2;
  // 48 layers: 40 local (48 - 48/6), 8 global.
  EXPECT_EQ(kv->SequenceBytes(32768), layer * (8 * 32768 + 40 * 1024));
}

TEST(ExtraFamiliesTest, DeepSeekV3IsMlaWithFp8BlockWeights) {
  const ModelSpec spec = Load("DeepSeek-V3");
  EXPECT_EQ(spec.attention_kind, AttentionKind::kMultiLatent);
  EXPECT_EQ(spec.num_moe_layers, 58u);  // first 3 dense of 61
  EXPECT_TRUE(spec.router_score_bias);
  ASSERT_TRUE(spec.quantization.has_value());
  EXPECT_EQ(spec.quantization->dtype, DType::kFp8);
  EXPECT_EQ(spec.quantization->group_size, 128u * 128u);
  absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(spec, {});
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(kv->bytes_per_token(), 61u * (512 + 64) * 2);
}

TEST(ExtraFamiliesTest, PythiaIsNeoxWithBiasesAndUntiedHead) {
  const ModelSpec spec = Load("pythia-160m");
  EXPECT_EQ(spec.naming, ProjectionNaming::kNeox);
  EXPECT_EQ(spec.norm_kind, NormKind::kLayerNorm);
  EXPECT_TRUE(spec.qkv_bias);
  EXPECT_TRUE(spec.mlp_bias);
  EXPECT_FALSE(spec.tie_word_embeddings);
}

}  // namespace
}  // namespace kvgate
