// ServingModel::EstimateBatch: KV bytes of a request batch and its errors.
#include "estimator/serving.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

ServingModel Create(const std::string& name, const ServingOptions& options) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(
      std::string(KVGATE_TEST_DATA_DIR) + "/models/" + name + ".json");
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<ServingModel> model = ServingModel::Create(*spec, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

void ExpectInvalid(const ServingModel& model,
                   const std::vector<SequenceShape>& batch,
                   const std::string& mention) {
  BatchEstimate out;
  const absl::Status status = model.EstimateBatch(batch, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(mention));
}

constexpr uint64_t kLlamaKvPerToken = 131072;

TEST(ServingTest, BatchKvIsTheSumOfBlockRoundedSequences) {
  const ServingModel model = Create("Meta-Llama-3-8B", {});
  BatchEstimate out;
  ASSERT_TRUE(model.EstimateBatch({{100, 28}, {10, 0}}, &out).ok());
  EXPECT_EQ(out.kv_cache_tokens, 128u + 16u);
  EXPECT_EQ(out.kv_cache_bytes, (128u + 16u) * kLlamaKvPerToken);
  EXPECT_GT(out.activation_bytes, 0u);
  EXPECT_EQ(out.total_bytes, out.kv_cache_bytes + out.activation_bytes);
}

TEST(ServingTest, WeightsAndPerTokenFigures) {
  const ServingModel model = Create("Meta-Llama-3-8B", {});
  EXPECT_EQ(model.weights_bytes(), 2u * 8030261248u);
  EXPECT_EQ(model.kv_cache_bytes_per_token(), kLlamaKvPerToken);
  EXPECT_EQ(model.max_model_len(), 8192u);
}

TEST(ServingTest, Fp8KvCacheHalvesTheBatchKv) {
  ServingOptions fp8;
  fp8.kv_cache_dtype = DType::kFp8;
  BatchEstimate a, b;
  ASSERT_TRUE(
      Create("Meta-Llama-3-8B", {}).EstimateBatch({{1000, 24}}, &a).ok());
  ASSERT_TRUE(
      Create("Meta-Llama-3-8B", fp8).EstimateBatch({{1000, 24}}, &b).ok());
  EXPECT_EQ(b.kv_cache_bytes * 2, a.kv_cache_bytes);
}

TEST(ServingTest, SharedPromptPrefixIsCountedOnce) {
  ServingOptions options;
  options.share_prompt_prefix = true;
  const ServingModel model = Create("Meta-Llama-3-8B", options);
  // Four samples of a 100-token prompt, 50 new tokens each: 160 slots for
  // the first; the 96 tokens of whole prompt blocks are shared by the rest.
  const std::vector<SequenceShape> batch(4, {100, 50});
  BatchEstimate out;
  ASSERT_TRUE(model.EstimateBatch(batch, &out).ok());
  EXPECT_EQ(out.kv_cache_tokens, 160u + 3 * (160u - 96u));
  EXPECT_EQ(out.kv_cache_bytes, out.kv_cache_tokens * kLlamaKvPerToken);
  // Without sharing: 4 x 160.
  BatchEstimate unshared;
  ASSERT_TRUE(
      Create("Meta-Llama-3-8B", {}).EstimateBatch(batch, &unshared).ok());
  EXPECT_EQ(unshared.kv_cache_tokens, 640u);
}

TEST(ServingTest, SlidingWindowCapsLongSequences) {
  const ServingModel model = Create("Mistral-7B-v0.1", {});
  BatchEstimate out;
  ASSERT_TRUE(model.EstimateBatch({{10000, 2000}}, &out).ok());
  EXPECT_EQ(out.kv_cache_bytes, 4096u * 131072);
}

// vLLM's dtype=auto: an fp32 checkpoint (gemma-2-9b's config says
// float32) is served in 16 bits; an explicit dtype is taken as given.
TEST(ServingTest, Fp32CheckpointIsServedIn16Bit) {
  const ServingModel served = Create("gemma-2-9b", {});
  EXPECT_EQ(served.quantization().dtype, DType::kBFloat16);
  EXPECT_EQ(served.weights_bytes(), served.parameters().total * 2);
  ServingOptions fp32;
  fp32.weight_dtype = DType::kFloat32;
  const ServingModel as_declared = Create("gemma-2-9b", fp32);
  EXPECT_EQ(as_declared.weights_bytes(), served.parameters().total * 4);
}

TEST(ServingTest, TensorParallelSplitsWeightsAndKv) {
  ServingOptions tp2;
  tp2.tensor_parallel = 2;
  const ServingModel model = Create("Meta-Llama-3-8B", tp2);
  EXPECT_EQ(model.weights_bytes(), 8030261248u);
  EXPECT_EQ(model.kv_cache_bytes_per_token(), kLlamaKvPerToken / 2);
}

TEST(ServingTest, IndivisibleTensorParallelFailsAtCreate) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(
      std::string(KVGATE_TEST_DATA_DIR) + "/models/Meta-Llama-3-8B.json");
  ServingOptions tp3;
  tp3.tensor_parallel = 3;
  EXPECT_EQ(ServingModel::Create(*spec, tp3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ServingTest, EmptyBatchIsInvalid) {
  ExpectInvalid(Create("gpt2", {}), {}, "sequences");
}

TEST(ServingTest, ZeroPromptNamesTheSequence) {
  ExpectInvalid(Create("gpt2", {}), {{10, 1}, {0, 5}},
                "sequences[1].prompt_tokens");
}

TEST(ServingTest, ContextLengthExceededNamesTheSequence) {
  // gpt2: 1024 positions.
  const ServingModel model = Create("gpt2", {});
  BatchEstimate out;
  EXPECT_TRUE(model.EstimateBatch({{1000, 24}}, &out).ok());
  ExpectInvalid(model, {{1000, 24}, {1000, 25}}, "sequences[1]");
  ExpectInvalid(model, {{1000, 25}}, "1024");
}

TEST(ServingTest, MaxModelLenOverridesTheConfig) {
  ServingOptions options;
  options.max_model_len = 512;
  ExpectInvalid(Create("gpt2", options), {{500, 13}}, "sequences[0]");
}

TEST(ServingTest, HugeSequenceIsInvalidNotOverflow) {
  const ServingModel model = Create("falcon-7b", {});  // no context limit
  ExpectInvalid(model, {{UINT64_MAX, 1}}, "sequences[0]");
  ExpectInvalid(model, {{1, UINT64_MAX}}, "sequences[0]");
  ExpectInvalid(model, {{uint64_t{1} << 40, 0}}, "sequences[0]");
}

TEST(ServingTest, BatchWhoseKvOverflowsIsInvalid) {
  // Each sequence just under 2^40 tokens x 8192 B: 2^53 B; 4096 of them
  // overflow 64 bits.
  const ServingModel model = Create("falcon-7b", {});
  const std::vector<SequenceShape> batch(4096, {(uint64_t{1} << 40) - 1024, 0});
  ExpectInvalid(model, batch, "overflow");
}

TEST(ServingTest, ActivationPeakIsTheLargestMomentNotTheSum) {
  // Logits for one token per sequence; chunked prefill bounds the step.
  ServingOptions chunked;
  chunked.chunked_prefill_tokens = 512;
  const ServingModel whole = Create("Meta-Llama-3-8B", {});
  const ServingModel chunk = Create("Meta-Llama-3-8B", chunked);
  BatchEstimate a, b;
  ASSERT_TRUE(whole.EstimateBatch({{4096, 0}}, &a).ok());
  ASSERT_TRUE(chunk.EstimateBatch({{4096, 0}}, &b).ok());
  EXPECT_EQ(a.kv_cache_bytes, b.kv_cache_bytes);
  EXPECT_LT(b.activation_bytes, a.activation_bytes);
  EXPECT_EQ(a.activation_bytes * 512, b.activation_bytes * 4096);
}

}  // namespace
}  // namespace kvgate
