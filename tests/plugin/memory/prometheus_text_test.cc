#include "plugin/memory/prometheus_text.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Optional;
using ::testing::Pair;
using ::testing::SizeIs;

std::vector<PrometheusSample> ParseOk(const std::string& page) {
  absl::StatusOr<std::vector<PrometheusSample>> samples =
      ParsePrometheusText(page);
  EXPECT_TRUE(samples.ok()) << samples.status();
  return samples.ok() ? *std::move(samples) : std::vector<PrometheusSample>();
}

// The error of parsing `page`, checked to be InvalidArgument.
std::string ParseError(const std::string& page,
                       const PrometheusTextOptions& options = {}) {
  absl::StatusOr<std::vector<PrometheusSample>> samples =
      ParsePrometheusText(page, options);
  EXPECT_FALSE(samples.ok()) << "page parsed: " << page;
  if (samples.ok()) return "";
  EXPECT_EQ(samples.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(samples.status().message());
}

TEST(PrometheusTextTest, EmptyAndCommentOnlyPagesHaveNoSamples) {
  EXPECT_THAT(ParseOk(""), IsEmpty());
  EXPECT_THAT(ParseOk("\n\n  \t\n"), IsEmpty());
  EXPECT_THAT(ParseOk("# HELP x A help text with \"quotes\" and \\n.\n"
                      "# TYPE x gauge\n"
                      "#just a comment\n"
                      "   # indented comment\n"),
              IsEmpty());
}

TEST(PrometheusTextTest, ParsesHelpTypeLabelsAndPlainMetrics) {
  const std::vector<PrometheusSample> samples = ParseOk(
      "# HELP vllm:num_requests_running Number of requests in model "
      "execution batches.\n"
      "# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n"
      "\n"
      "# TYPE process_open_fds gauge\n"
      "process_open_fds 41\n");
  ASSERT_THAT(samples, SizeIs(2));
  EXPECT_EQ(samples[0].name, "vllm:num_requests_running");
  EXPECT_THAT(samples[0].labels,
              ElementsAre(Pair("engine", "0"), Pair("model_name", "m")));
  EXPECT_EQ(samples[0].value, 3.0);
  EXPECT_EQ(samples[0].timestamp_ms, std::nullopt);
  EXPECT_EQ(samples[1].name, "process_open_fds");
  EXPECT_THAT(samples[1].labels, IsEmpty());
  EXPECT_EQ(samples[1].value, 41.0);
}

TEST(PrometheusTextTest, LabelsAreOrderedByNameAndFound) {
  const std::vector<PrometheusSample> samples =
      ParseOk("x{zeta=\"1\",alpha=\"2\",mid=\"\"} 1\n");
  ASSERT_THAT(samples, SizeIs(1));
  EXPECT_THAT(
      samples[0].labels,
      ElementsAre(Pair("alpha", "2"), Pair("mid", ""), Pair("zeta", "1")));
  ASSERT_NE(samples[0].FindLabel("zeta"), nullptr);
  EXPECT_EQ(*samples[0].FindLabel("zeta"), "1");
  EXPECT_EQ(samples[0].FindLabel("missing"), nullptr);
}

TEST(PrometheusTextTest, UnescapesLabelValues) {
  const std::vector<PrometheusSample> samples = ParseOk(
      R"(x{path="C:\\dir\\",quote="say \"hi\"",nl="a\nb",brace="}{,="} 1)"
      "\n");
  ASSERT_THAT(samples, SizeIs(1));
  EXPECT_THAT(
      samples[0].labels,
      ElementsAre(Pair("brace", "}{,="), Pair("nl", "a\nb"),
                  Pair("path", "C:\\dir\\"), Pair("quote", "say \"hi\"")));
}

TEST(PrometheusTextTest, AcceptsTrailingCommaEmptyBracesAndBlanks) {
  const std::vector<PrometheusSample> samples = ParseOk(
      "a{x=\"1\",} 1\n"
      "b{} 2\n"
      "  c { x = \"1\" , y=\"2\" , }\t3  \n"
      "d\t4\n");
  ASSERT_THAT(samples, SizeIs(4));
  EXPECT_THAT(samples[0].labels, ElementsAre(Pair("x", "1")));
  EXPECT_THAT(samples[1].labels, IsEmpty());
  EXPECT_EQ(samples[2].name, "c");
  EXPECT_THAT(samples[2].labels, ElementsAre(Pair("x", "1"), Pair("y", "2")));
  EXPECT_EQ(samples[2].value, 3.0);
  EXPECT_EQ(samples[3].value, 4.0);
}

TEST(PrometheusTextTest, ParsesValueSpellings) {
  const std::vector<PrometheusSample> samples = ParseOk(
      "a 1.5e+09\nb -2.5E-3\nc +7\nd .5\ne NaN\nf +Inf\ng -Inf\nh Inf\n"
      "i 0\nj -0\nk 6.02e23\n");
  ASSERT_THAT(samples, SizeIs(11));
  EXPECT_EQ(samples[0].value, 1.5e9);
  EXPECT_EQ(samples[1].value, -2.5e-3);
  EXPECT_EQ(samples[2].value, 7.0);
  EXPECT_EQ(samples[3].value, 0.5);
  EXPECT_TRUE(std::isnan(samples[4].value));
  EXPECT_EQ(samples[5].value, std::numeric_limits<double>::infinity());
  EXPECT_EQ(samples[6].value, -std::numeric_limits<double>::infinity());
  EXPECT_EQ(samples[7].value, std::numeric_limits<double>::infinity());
  EXPECT_EQ(samples[8].value, 0.0);
  EXPECT_EQ(samples[9].value, 0.0);
  EXPECT_EQ(samples[10].value, 6.02e23);
}

TEST(PrometheusTextTest, ParsesTimestamps) {
  const std::vector<PrometheusSample> samples =
      ParseOk("a{x=\"1\"} 2 1700000000123\nb 3 -5\nc 4 1700000000000  \n");
  ASSERT_THAT(samples, SizeIs(3));
  EXPECT_THAT(samples[0].timestamp_ms, Optional(int64_t{1700000000123}));
  EXPECT_THAT(samples[1].timestamp_ms, Optional(int64_t{-5}));
  EXPECT_THAT(samples[2].timestamp_ms, Optional(int64_t{1700000000000}));
}

TEST(PrometheusTextTest, AcceptsCrlfAndAMissingFinalLineEnd) {
  const std::vector<PrometheusSample> samples =
      ParseOk("# TYPE a gauge\r\na{x=\"1\"} 1\r\n\r\nb 2 17\r\nc 3");
  ASSERT_THAT(samples, SizeIs(3));
  EXPECT_THAT(samples[0].labels, ElementsAre(Pair("x", "1")));
  EXPECT_EQ(samples[1].value, 2.0);
  EXPECT_THAT(samples[1].timestamp_ms, Optional(int64_t{17}));
  EXPECT_EQ(samples[2].value, 3.0);
}

TEST(PrometheusTextTest, OneBadLineFailsThePageNamingTheLine) {
  const std::string error =
      ParseError("# HELP a A.\n# TYPE a gauge\na 1\n\nb{x=\"1\" 2\nc 3\n");
  EXPECT_THAT(error, HasSubstr("line 5:"));
  EXPECT_THAT(error, HasSubstr("expected ',' or '}'"));
  // CRLF pages count lines the same way.
  EXPECT_THAT(ParseError("a 1\r\nb 2\r\nc\r\n"),
              HasSubstr("line 3: sample \"c\" has no value"));
}

TEST(PrometheusTextTest, RejectsMalformedNames) {
  EXPECT_THAT(ParseError("1abc 2\n"), HasSubstr("line 1: expected a metric"));
  EXPECT_THAT(ParseError("a-b 2\n"),
              HasSubstr("line 1: unexpected character '-' in metric name"));
  EXPECT_THAT(ParseError("{x=\"1\"} 2\n"), HasSubstr("expected a metric"));
  EXPECT_THAT(ParseError("a{1x=\"1\"} 2\n"),
              HasSubstr("expected a label name"));
  EXPECT_THAT(ParseError("a{x-y=\"1\"} 2\n"),
              HasSubstr("expected '=' after label name \"x\""));
}

TEST(PrometheusTextTest, RejectsMalformedLabels) {
  EXPECT_THAT(ParseError("a{x=1} 2\n"),
              HasSubstr("expected '\"' to open the value of label \"x\""));
  EXPECT_THAT(ParseError("a{x \"1\"} 2\n"),
              HasSubstr("expected '=' after label name \"x\""));
  EXPECT_THAT(ParseError("a{x=\"1} 2\n"),
              HasSubstr("the value of label \"x\" is not closed"));
  EXPECT_THAT(ParseError("a{x=\"1\\"),
              HasSubstr("the value of label \"x\" is not closed"));
  EXPECT_THAT(ParseError("a{x=\"\\t\"} 2\n"),
              HasSubstr("invalid escape '\\t' in the value of label \"x\""));
  EXPECT_THAT(ParseError("a{x=\"1\" y=\"2\"} 2\n"),
              HasSubstr("expected ',' or '}' after the value of label \"x\""));
  EXPECT_THAT(ParseError("a{x=\"1\",x=\"2\"} 2\n"),
              HasSubstr("label \"x\" appears twice"));
  EXPECT_THAT(ParseError("a{x=\"1\",,} 2\n"),
              HasSubstr("expected a label name"));
  EXPECT_THAT(ParseError("a{"), HasSubstr("label set is not closed"));
}

TEST(PrometheusTextTest, RejectsMalformedValuesAndTimestamps) {
  EXPECT_THAT(ParseError("a{x=\"1\"}\n"), HasSubstr("has no value"));
  EXPECT_THAT(ParseError("a   \n"), HasSubstr("has no value"));
  EXPECT_THAT(ParseError("a abc\n"),
              HasSubstr("line 1: value \"abc\" is not a number"));
  for (const char* value : {"nan", "inf", "+-1", "--1", "1e", "0x10", "1,5",
                            "1e400", "1e-400", "infinity", "+", "-", "."}) {
    EXPECT_THAT(ParseError(std::string("a ") + value + "\n"),
                HasSubstr("is not a number"))
        << value;
  }
  EXPECT_THAT(ParseError("a 1 1.5\n"),
              HasSubstr("timestamp \"1.5\" is not an integer"));
  EXPECT_THAT(ParseError("a 1 +5\n"), HasSubstr("is not an integer"));
  EXPECT_THAT(ParseError("a 1 99999999999999999999\n"),
              HasSubstr("is not an integer"));
  EXPECT_THAT(ParseError("a 1 2 3\n"),
              HasSubstr("unexpected \"3\" after the timestamp"));
}

TEST(PrometheusTextTest, BoundsThePageAndItsLines) {
  PrometheusTextOptions options;
  options.max_page_bytes = 16;
  EXPECT_THAT(ParseError("a 1\nb 2\nc 3\nd 4\ne 5\n", options),
              HasSubstr("page is 20 bytes, over the limit of 16"));
  options = PrometheusTextOptions();
  options.max_line_bytes = 8;
  EXPECT_THAT(ParseError("a 1\nabcdef 1\r\nabcdefgh 1\n", options),
              HasSubstr("line 3: 10 bytes, over the limit of 8"));
  // The defaults: 4 MiB and 64 KiB.
  EXPECT_EQ(PrometheusTextOptions().max_page_bytes, 4u << 20);
  EXPECT_EQ(PrometheusTextOptions().max_line_bytes, 64u << 10);
  const std::string long_line = "a{x=\"" + std::string(70000, 'v') + "\"} 1\n";
  EXPECT_THAT(ParseError(long_line), HasSubstr("line 1: 70009 bytes"));
}

}  // namespace
}  // namespace kvgate
