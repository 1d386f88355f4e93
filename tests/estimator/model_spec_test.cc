// ModelSpec parsing: the traps of real config.json files, unknown families,
// and bad input (which must give a clear InvalidArgument, never a crash).
#include "estimator/model_spec.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

std::string ModelPath(const std::string& name) {
  return std::string(KVGATE_TEST_DATA_DIR) + "/models/" + name + ".json";
}

ModelSpec Load(const std::string& name) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(ModelPath(name));
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

// A minimal Llama-like config; `extra` is spliced into the object.
std::string Config(const std::string& extra = "") {
  return R"({"model_type": "llama", "hidden_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 100)" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

void ExpectInvalid(const std::string& json, const std::string& mention) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(json);
  ASSERT_FALSE(spec.ok()) << json;
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(), HasSubstr(mention)) << json;
}

TEST(ModelSpecTest, FalconMultiQueryIgnoresMisleadingNumKvHeads) {
  const ModelSpec spec = Load("falcon-7b");
  EXPECT_EQ(spec.num_attention_heads, 71u);
  EXPECT_EQ(spec.num_kv_heads, 1u);  // config says num_kv_heads: 71
  EXPECT_EQ(spec.head_dim, 64u);
  EXPECT_EQ(spec.naming, ProjectionNaming::kFalcon);
  EXPECT_EQ(spec.norms_per_layer, 1u);  // parallel attention: one norm
  EXPECT_EQ(spec.intermediate_size, 4u * 4544);
  EXPECT_TRUE(spec.tie_word_embeddings);
}

TEST(ModelSpecTest, FalconNewDecoderArchitectureReadsKvHeads) {
  const ModelSpec spec = *ParseModelConfig(R"({"model_type": "falcon",
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
      "num_kv_heads": 2, "new_decoder_architecture": true,
      "multi_query": true, "vocab_size": 100})");
  EXPECT_EQ(spec.num_kv_heads, 2u);
  EXPECT_EQ(spec.norms_per_layer, 2u);
}

TEST(ModelSpecTest, DeepSeekV2LiteIsMultiLatentWithSharedExpertsAndDenseFirst) {
  const ModelSpec spec = Load("DeepSeek-V2-Lite");
  EXPECT_EQ(spec.attention_kind, AttentionKind::kMultiLatent);
  EXPECT_EQ(spec.kv_lora_rank, 512u);
  EXPECT_EQ(spec.qk_rope_head_dim, 64u);
  EXPECT_EQ(spec.q_lora_rank, 0u);  // null: a plain q_proj
  EXPECT_EQ(spec.num_experts, 64u);
  EXPECT_EQ(spec.experts_per_token, 6u);
  EXPECT_EQ(spec.num_moe_layers, 26u);  // first_k_dense_replace: 1 of 27
  EXPECT_EQ(spec.shared_expert_intermediate_size, 2u * 1408);
  EXPECT_EQ(spec.moe_intermediate_size, 1408u);
  EXPECT_EQ(spec.intermediate_size, 10944u);  // the dense first layer
}

TEST(ModelSpecTest, MixtralRoutesEveryLayer) {
  const ModelSpec spec = Load("Mixtral-8x7B-v0.1");
  EXPECT_EQ(spec.num_experts, 8u);
  EXPECT_EQ(spec.experts_per_token, 2u);
  EXPECT_EQ(spec.num_moe_layers, spec.num_layers);
  EXPECT_EQ(spec.shared_expert_intermediate_size, 0u);
}

TEST(ModelSpecTest, Gemma2ExplicitHeadDimTiedByDefaultAndAlternatingWindow) {
  const ModelSpec spec = Load("gemma-2-9b");
  EXPECT_EQ(spec.head_dim, 256u);         // not 3584 / 16 = 224
  EXPECT_TRUE(spec.tie_word_embeddings);  // config omits the field
  EXPECT_EQ(spec.norms_per_layer, 4u);
  EXPECT_EQ(spec.sliding_window, 4096u);
  EXPECT_EQ(spec.num_sliding_layers, 21u);  // of 42
  EXPECT_EQ(spec.hidden_act, "gelu_pytorch_tanh");
  EXPECT_EQ(spec.torch_dtype, DType::kFloat32);
}

TEST(ModelSpecTest, Phi3IsFusedWithEveryLayerSliding) {
  const ModelSpec spec = Load("Phi-3-mini-4k-instruct");
  EXPECT_EQ(spec.naming, ProjectionNaming::kFusedPhi3);
  EXPECT_EQ(spec.num_kv_heads, 32u);
  EXPECT_EQ(spec.sliding_window, 2047u);
  EXPECT_EQ(spec.num_sliding_layers, 32u);
}

TEST(ModelSpecTest, Qwen2HasQkvBiasAndIgnoresDisabledSlidingWindow) {
  const ModelSpec spec = Load("Qwen2.5-7B");
  EXPECT_TRUE(spec.qkv_bias);
  EXPECT_FALSE(spec.o_bias);
  EXPECT_EQ(spec.num_kv_heads, 4u);
  EXPECT_EQ(spec.num_sliding_layers, 0u);  // use_sliding_window: false
  EXPECT_EQ(spec.sliding_window, 0u);
}

TEST(ModelSpecTest, Qwen2SlidingWindowAppliesAboveMaxWindowLayers) {
  const ModelSpec spec = *ParseModelConfig(R"({"model_type": "qwen2",
      "hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4,
      "intermediate_size": 128, "vocab_size": 100,
      "max_position_embeddings": 32768, "use_sliding_window": true,
      "sliding_window": 4096, "max_window_layers": 6})");
  EXPECT_EQ(spec.sliding_window, 4096u);
  EXPECT_EQ(spec.num_sliding_layers, 2u);
}

TEST(ModelSpecTest, MistralSlidesEveryLayerAt4096) {
  const ModelSpec spec = Load("Mistral-7B-v0.1");
  EXPECT_EQ(spec.sliding_window, 4096u);
  EXPECT_EQ(spec.num_sliding_layers, 32u);
}

TEST(ModelSpecTest, Gpt2ReadsAliasesAndLearnedPositions) {
  const ModelSpec spec = Load("gpt2");
  EXPECT_EQ(spec.hidden_size, 768u);
  EXPECT_EQ(spec.num_layers, 12u);
  EXPECT_EQ(spec.intermediate_size, 3072u);  // n_inner: null -> 4 x hidden
  EXPECT_EQ(spec.learned_position_embeddings, 1024u);
  EXPECT_EQ(spec.naming, ProjectionNaming::kGpt2);
  EXPECT_EQ(spec.hidden_act, "gelu_new");
  EXPECT_EQ(spec.norm_kind, NormKind::kLayerNorm);
}

TEST(ModelSpecTest, LlamaGqa) {
  const ModelSpec spec = Load("Meta-Llama-3-8B");
  EXPECT_TRUE(spec.known_family);
  EXPECT_EQ(spec.num_kv_heads, 8u);
  EXPECT_EQ(spec.head_dim, 128u);
  EXPECT_FALSE(spec.qkv_bias);
  EXPECT_FALSE(spec.tie_word_embeddings);
  EXPECT_TRUE(spec.notes.empty());
}

TEST(ModelSpecTest, UnknownModelTypeWithStandardFieldsWorksWithANote) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      R"({"model_type": "brand_new_lm", "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 128,
          "vocab_size": 100, "torch_dtype": "bfloat16"})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->known_family);
  EXPECT_EQ(spec->num_kv_heads, 2u);
  ASSERT_FALSE(spec->notes.empty());
  EXPECT_THAT(spec->notes[0], HasSubstr("brand_new_lm"));
}

TEST(ModelSpecTest, UnknownFieldsAreIgnored) {
  EXPECT_TRUE(
      ParseModelConfig(Config(R"("future_field": {"x": [1, 2]})")).ok());
}

TEST(ModelSpecTest, TextConfigOfAMultimodalWrapperIsRead) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(R"({
      "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
      "text_config": {"model_type": "llama", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 100},
      "vision_config": {"hidden_size": 32}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_type, "llama");
  EXPECT_EQ(spec->architecture, "LlavaForConditionalGeneration");
  EXPECT_EQ(spec->hidden_size, 64u);
  EXPECT_FALSE(spec->notes.empty());
}

TEST(ModelSpecTest, MissingEssentialFieldIsNamed) {
  ExpectInvalid(R"({"num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 100})",
                "hidden_size");
  ExpectInvalid(R"({"hidden_size": 64, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 100})",
                "num_hidden_layers");
  ExpectInvalid(R"({"hidden_size": 64, "num_hidden_layers": 2,
                    "intermediate_size": 128, "vocab_size": 100})",
                "num_attention_heads");
  ExpectInvalid(R"({"hidden_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "intermediate_size": 128})",
                "vocab_size");
  ExpectInvalid(R"({"model_type": "llama", "hidden_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "vocab_size": 100})",
                "intermediate_size");
}

TEST(ModelSpecTest, ZeroOrNullEssentialCountsAsMissing) {
  ExpectInvalid(Config(R"("hidden_size": 0)"), "hidden_size");
  ExpectInvalid(R"({"hidden_size": null, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "vocab_size": 100})",
                "hidden_size");
}

TEST(ModelSpecTest, MalformedJsonIsInvalidArgumentWithPosition) {
  ExpectInvalid(R"({"hidden_size": 64,)", "not valid JSON");
  ExpectInvalid("", "not valid JSON");
  ExpectInvalid("{\"hidden_size\": 64} trailing", "not valid JSON");
}

TEST(ModelSpecTest, NonObjectJsonIsRejected) {
  ExpectInvalid("[1, 2, 3]", "JSON object");
  ExpectInvalid("42", "JSON object");
  ExpectInvalid("\"config\"", "JSON object");
  ExpectInvalid("null", "JSON object");
}

TEST(ModelSpecTest, NegativeValueIsRejected) {
  ExpectInvalid(R"({"hidden_size": -64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "vocab_size": 100})",
                "hidden_size");
  ExpectInvalid(Config(R"("num_key_value_heads": -1)"), "num_key_value_heads");
}

TEST(ModelSpecTest, NonIntegralFloatIsRejectedIntegralFloatAccepted) {
  ExpectInvalid(Config(R"("num_key_value_heads": 2.5)"), "num_key_value_heads");
  absl::StatusOr<ModelSpec> spec =
      ParseModelConfig(Config(R"("num_key_value_heads": 2.0)"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_kv_heads, 2u);
}

TEST(ModelSpecTest, StringWhereNumberExpectedIsRejected) {
  ExpectInvalid(R"({"hidden_size": "4096", "num_hidden_layers": 2,
                    "num_attention_heads": 4, "vocab_size": 100})",
                "hidden_size");
  ExpectInvalid(Config(R"("max_position_embeddings": "long")"),
                "max_position_embeddings");
  ExpectInvalid(Config(R"("sliding_window": [4096])"), "sliding_window");
}

TEST(ModelSpecTest, HugeValuesAreRejectedOrSafe) {
  ExpectInvalid(Config(R"("num_key_value_heads": 1e300)"),
                "num_key_value_heads");
  ExpectInvalid(Config(R"("num_key_value_heads": 99999999999999999999999)"),
                "num_key_value_heads");
  // Larger than the query heads.
  ExpectInvalid(Config(R"("num_key_value_heads": 8)"), "num_key_value_heads");
  // Not a divisor.
  ExpectInvalid(Config(R"("num_key_value_heads": 3)"), "num_key_value_heads");
}

TEST(ModelSpecTest, HiddenSizeNotDivisibleByHeadsWithoutHeadDim) {
  ExpectInvalid(R"({"hidden_size": 65, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "intermediate_size": 8,
                    "vocab_size": 100})",
                "head_dim");
}

TEST(ModelSpecTest, MoeWithoutExpertsPerTokenIsRejected) {
  ExpectInvalid(R"({"model_type": "mixtral", "hidden_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 100,
                    "num_local_experts": 8})",
                "num_experts_per_tok");
  ExpectInvalid(R"({"model_type": "mixtral", "hidden_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 100,
                    "num_local_experts": 8, "num_experts_per_tok": 9})",
                "num_experts_per_tok");
}

TEST(ModelSpecTest, MlaWithoutLatentRankIsRejected) {
  ExpectInvalid(R"({"model_type": "deepseek_v2", "hidden_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 100,
                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                    "v_head_dim": 16})",
                "kv_lora_rank");
}

TEST(ModelSpecTest, UnknownTorchDtypeIsANoteNotAnError) {
  absl::StatusOr<ModelSpec> spec =
      ParseModelConfig(Config(R"("torch_dtype": "float13")"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->torch_dtype, DType::kBFloat16);
  EXPECT_THAT(spec->notes.back(), HasSubstr("float13"));
}

TEST(ModelSpecTest, WrongTypesOfOptionalFieldsNeverCrash) {
  // Booleans, arrays and objects where the parser expects other types fall
  // back or fail cleanly.
  for (const char* extra :
       {R"("tie_word_embeddings": "yes")", R"("layer_types": 7)",
        R"("mlp_only_layers": [-1, 99, "x"])", R"("architectures": {})",
        R"("quantization_config": [])", R"("text_config": 5)",
        R"("quantization_config": {"quant_method": 4})",
        R"("quantization_config": {"quant_method": "gptq", "bits": "four"})",
        R"("model_type": 12)"}) {
    absl::StatusOr<ModelSpec> spec = ParseModelConfig(Config(extra));
    EXPECT_TRUE(spec.ok() ||
                spec.status().code() == absl::StatusCode::kInvalidArgument)
        << extra << ": " << spec.status();
  }
}

TEST(ModelSpecTest, GemmaThreeEveryNthLayerIsGlobal) {
  const ModelSpec spec = *ParseModelConfig(R"({"model_type": "gemma3_text",
      "hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
      "vocab_size": 100, "max_position_embeddings": 131072,
      "sliding_window": 1024, "sliding_window_pattern": 6})");
  EXPECT_EQ(spec.num_sliding_layers, 10u);
  EXPECT_TRUE(spec.qk_norm);
}

TEST(ModelSpecTest, LayerTypesListWinsOverFamilyPattern) {
  const ModelSpec spec = *ParseModelConfig(Config(
      R"("sliding_window": 512, "layer_types": ["sliding_attention",
         "full_attention"])"));
  EXPECT_EQ(spec.sliding_window, 512u);
  EXPECT_EQ(spec.num_sliding_layers, 1u);
}

TEST(ModelSpecTest, QuantizationConfigIsRead) {
  const ModelSpec gptq = *ParseModelConfig(Config(
      R"("quantization_config": {"quant_method": "gptq", "bits": 4,
         "group_size": 128})"));
  ASSERT_TRUE(gptq.quantization.has_value());
  EXPECT_EQ(gptq.quantization->dtype, DType::kInt4);
  EXPECT_EQ(gptq.quantization->group_size, 128u);
  const ModelSpec other = *ParseModelConfig(
      Config(R"("quantization_config": {"quant_method": "hqq"})"));
  EXPECT_FALSE(other.quantization.has_value());
  EXPECT_THAT(other.notes.back(), HasSubstr("hqq"));
}

TEST(ModelSpecTest, LoadModelConfigReportsMissingFile) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig("/nonexistent/config.json");
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelSpecTest, EveryPresetLoads) {
  const std::vector<std::string> names = PresetNames();
  EXPECT_GE(names.size(), 11u);
  for (const std::string& name : names) {
    absl::StatusOr<ModelSpec> spec = LoadPreset(name);
    EXPECT_TRUE(spec.ok()) << name << ": " << spec.status();
    EXPECT_TRUE(spec.ok() && spec->known_family) << name;
  }
  EXPECT_TRUE(LoadModel("llama-3-8b").ok());
  EXPECT_EQ(LoadPreset("no-such-model").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvgate
