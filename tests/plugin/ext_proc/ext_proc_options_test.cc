// ResolveExtProcConfig: ExtProcConfig -> ExtProcOptions, the sizing fields.
#include "plugin/ext_proc/ext_proc_options.h"

#include "gtest/gtest.h"

namespace kvgate {
namespace {

TEST(ResolveExtProcConfigTest, SizingDefaultsAreTheEnginesRuleAndNoTrust) {
  absl::StatusOr<ExtProcOptions> o =
      ResolveExtProcConfig(kvgate::v1::ExtProcConfig(), absl::Seconds(30));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->default_max_tokens, 0u);
  EXPECT_FALSE(o->trust_token_count_header);
}

TEST(ResolveExtProcConfigTest, SizingFieldsAreRead) {
  kvgate::v1::ExtProcConfig config;
  config.set_default_max_tokens(512);
  config.set_trust_token_count_header(true);
  absl::StatusOr<ExtProcOptions> o =
      ResolveExtProcConfig(config, absl::Seconds(30));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->default_max_tokens, 512u);
  EXPECT_TRUE(o->trust_token_count_header);
}

}  // namespace
}  // namespace kvgate
