// KV-cache sizing: dtype, tensor parallelism, MLA, sliding windows, blocks.
#include "estimator/kv_cache.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

ModelSpec Load(const std::string& name) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(
      std::string(KVGATE_TEST_DATA_DIR) + "/models/" + name + ".json");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

KvCacheModel Create(const ModelSpec& spec, KvCacheOptions options) {
  absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(spec, options);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return *kv;
}

TEST(KvCacheTest, Llama3PerTokenIsTwoLayersHeadsHeadDimBytes) {
  const KvCacheModel kv = Create(Load("Meta-Llama-3-8B"), {});
  EXPECT_EQ(kv.dtype(), DType::kBFloat16);
  EXPECT_EQ(kv.bytes_per_token(), 2u * 32 * 8 * 128 * 2);
}

TEST(KvCacheTest, Fp8HalvesTheCache) {
  const ModelSpec spec = Load("Meta-Llama-3-8B");
  KvCacheOptions fp8;
  fp8.dtype = DType::kFp8;
  EXPECT_EQ(Create(spec, fp8).bytes_per_token() * 2,
            Create(spec, {}).bytes_per_token());
  EXPECT_EQ(Create(spec, fp8).SequenceBytes(1000) * 2,
            Create(spec, {}).SequenceBytes(1000));
}

TEST(KvCacheTest, Fp32CheckpointServesA16BitCacheByDefault) {
  // gemma-2-9b's config says float32.
  EXPECT_EQ(Create(Load("gemma-2-9b"), {}).dtype(), DType::kBFloat16);
}

TEST(KvCacheTest, FourBitCacheIsRejected) {
  KvCacheOptions options;
  options.dtype = DType::kInt4;
  EXPECT_EQ(KvCacheModel::Create(Load("gpt2"), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, TensorParallelDividesKvHeads) {
  const ModelSpec spec = Load("Meta-Llama-3-8B");  // 8 KV heads
  KvCacheOptions tp4;
  tp4.tensor_parallel = 4;
  const KvCacheModel kv = Create(spec, tp4);
  EXPECT_EQ(kv.kv_heads_per_gpu(), 2u);
  EXPECT_EQ(kv.bytes_per_token(), 131072u / 4);
}

TEST(KvCacheTest, FewerKvHeadsThanGpusAreReplicated) {
  const ModelSpec spec = Load("Meta-Llama-3-8B");
  KvCacheOptions tp16;
  tp16.tensor_parallel = 16;
  const KvCacheModel kv = Create(spec, tp16);
  EXPECT_EQ(kv.kv_heads_per_gpu(), 1u);
  EXPECT_EQ(kv.bytes_per_token(), 131072u / 8);
  // Falcon's single KV head is on every GPU.
  KvCacheOptions tp8;
  tp8.tensor_parallel = 8;
  EXPECT_EQ(Create(Load("falcon-7b"), tp8).bytes_per_token(), 8192u);
}

TEST(KvCacheTest, KvHeadsNotDivisibleByTensorParallelIsAnError) {
  const ModelSpec spec = Load("Qwen2.5-7B");  // 4 KV heads... 28 query
  KvCacheOptions tp3;
  tp3.tensor_parallel = 3;
  absl::StatusOr<KvCacheModel> kv = KvCacheModel::Create(spec, tp3);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(kv.status().message(), HasSubstr("tensor parallel"));
  KvCacheOptions tp6;  // more GPUs than heads, but not a multiple
  tp6.tensor_parallel = 6;
  EXPECT_FALSE(KvCacheModel::Create(spec, tp6).ok());
}

TEST(KvCacheTest, MlaLatentIsReplicatedUnderTensorParallel) {
  const ModelSpec spec = Load("DeepSeek-V2-Lite");
  const KvCacheModel one = Create(spec, {});
  EXPECT_EQ(one.bytes_per_token(), 27u * (512 + 64) * 2);
  KvCacheOptions tp8;
  tp8.tensor_parallel = 8;
  EXPECT_EQ(Create(spec, tp8).bytes_per_token(), one.bytes_per_token());
}

TEST(KvCacheTest, ZeroBlockSizeOrTensorParallelIsAnError) {
  KvCacheOptions zero_block;
  zero_block.block_size = 0;
  EXPECT_FALSE(KvCacheModel::Create(Load("gpt2"), zero_block).ok());
  KvCacheOptions zero_tp;
  zero_tp.tensor_parallel = 0;
  EXPECT_FALSE(KvCacheModel::Create(Load("gpt2"), zero_tp).ok());
}

TEST(KvCacheTest, SequencesRoundUpToWholeBlocks) {
  const KvCacheModel kv = Create(Load("Meta-Llama-3-8B"), {});  // block 16
  EXPECT_EQ(kv.RoundToBlock(1), 16u);
  EXPECT_EQ(kv.RoundToBlock(16), 16u);
  EXPECT_EQ(kv.RoundToBlock(17), 32u);
  EXPECT_EQ(kv.SequenceBytes(17), 32u * 131072);
  KvCacheOptions unpaged;
  unpaged.block_size = 1;
  EXPECT_EQ(Create(Load("Meta-Llama-3-8B"), unpaged).SequenceBytes(17),
            17u * 131072);
}

TEST(KvCacheTest, MistralSlidingWindowCapsAt4096) {
  const ModelSpec spec = Load("Mistral-7B-v0.1");
  const KvCacheModel kv = Create(spec, {});
  EXPECT_EQ(kv.SequenceBytes(4096), 4096u * 131072);
  EXPECT_EQ(kv.SequenceBytes(10000), 4096u * 131072);
  EXPECT_EQ(kv.bytes_per_token(), 131072u);  // the model-card figure
  KvCacheOptions no_window;
  no_window.honor_sliding_window = false;
  EXPECT_EQ(Create(spec, no_window).SequenceBytes(10000), 10000u * 131072);
}

TEST(KvCacheTest, Gemma2HalfTheLayersCapAtTheWindow) {
  const ModelSpec spec = Load("gemma-2-9b");
  const KvCacheModel kv = Create(spec, {});
  const uint64_t layer = 2 * 8 * 256 * 2;  // one layer, one token
  EXPECT_EQ(kv.SequenceBytes(8000), layer * (21 * 8000 + 21 * 4096));
  EXPECT_EQ(kv.SequenceBytes(100), layer * 42 * 112);  // 100 -> 7 blocks
}

TEST(KvCacheTest, Qwen2DisabledSlidingWindowKeepsEveryToken) {
  const KvCacheModel kv = Create(Load("Qwen2.5-7B"), {});
  EXPECT_EQ(kv.SequenceBytes(200000), uint64_t{200000} * 57344);
}

}  // namespace
}  // namespace kvgate
