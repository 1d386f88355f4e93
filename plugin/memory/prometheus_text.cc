#include "plugin/memory/prometheus_text.h"

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/charconv.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvgate {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsMetricNameStart(char c) { return IsAlpha(c) || c == '_' || c == ':'; }
bool IsMetricNameChar(char c) { return IsMetricNameStart(c) || IsDigit(c); }
bool IsLabelNameStart(char c) { return IsAlpha(c) || c == '_'; }
bool IsLabelNameChar(char c) { return IsLabelNameStart(c) || IsDigit(c); }

// Parses the value token: a float, NaN or [+-]Inf. Returns false when the
// token is not one, or its magnitude overflows or underflows a double.
bool ParseValue(absl::string_view token, double* value) {
  if (token == "NaN") {
    *value = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  if (token == "+Inf" || token == "Inf") {
    *value = std::numeric_limits<double>::infinity();
    return true;
  }
  if (token == "-Inf") {
    *value = -std::numeric_limits<double>::infinity();
    return true;
  }
  // absl::from_chars takes no leading '+' and would read hexadecimal and
  // "inf"/"nan" spellings, which the format does not have: only a sign,
  // digits, '.' and an exponent are let through.
  const bool plus = !token.empty() && token.front() == '+';
  if (plus) token.remove_prefix(1);
  const bool minus = !token.empty() && token.front() == '-';
  if (plus && minus) return false;
  const absl::string_view digits = minus ? token.substr(1) : token;
  if (digits.empty() || !(IsDigit(digits.front()) || digits.front() == '.')) {
    return false;
  }
  for (char c : digits) {
    if (!IsDigit(c) && c != '.' && c != 'e' && c != 'E' && c != '+' &&
        c != '-') {
      return false;
    }
  }
  const char* end = token.data() + token.size();
  const absl::from_chars_result result =
      absl::from_chars(token.data(), end, *value);
  return result.ec == std::errc() && result.ptr == end;
}

// Whether `token` is an optional '-' followed by one or more digits.
bool IsInteger(absl::string_view token) {
  if (!token.empty() && token.front() == '-') token.remove_prefix(1);
  if (token.empty()) return false;
  for (char c : token) {
    if (!IsDigit(c)) return false;
  }
  return true;
}

// The parser of one sample line; `line` has no line end.
class LineParser {
 public:
  explicit LineParser(absl::string_view line) : rest_(line) {}

  // Parses the whole line into `sample`; on failure returns what is wrong
  // (without the line number).
  absl::Status Parse(PrometheusSample* sample) {
    SkipBlanks();
    absl::Status status = ParseMetricName(&sample->name);
    if (!status.ok()) return status;
    SkipBlanks();
    if (!rest_.empty() && rest_.front() == '{') {
      rest_.remove_prefix(1);
      status = ParseLabels(&sample->labels);
      if (!status.ok()) return status;
      SkipBlanks();
    }
    const absl::string_view value = NextToken();
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample \"", sample->name, "\" has no value"));
    }
    if (!ParseValue(value, &sample->value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "value \"", absl::CHexEscape(value), "\" is not a number"));
    }
    SkipBlanks();
    if (rest_.empty()) return absl::OkStatus();
    const absl::string_view timestamp = NextToken();
    int64_t ms = 0;
    if (!IsInteger(timestamp) || !absl::SimpleAtoi(timestamp, &ms)) {
      return absl::InvalidArgumentError(
          absl::StrCat("timestamp \"", absl::CHexEscape(timestamp),
                       "\" is not an integer of milliseconds"));
    }
    sample->timestamp_ms = ms;
    SkipBlanks();
    if (!rest_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected \"", absl::CHexEscape(rest_), "\" after the timestamp"));
    }
    return absl::OkStatus();
  }

 private:
  void SkipBlanks() {
    while (!rest_.empty() && IsBlank(rest_.front())) rest_.remove_prefix(1);
  }

  // The bytes up to the next blank (or the end), consumed.
  absl::string_view NextToken() {
    size_t n = 0;
    while (n < rest_.size() && !IsBlank(rest_[n])) ++n;
    const absl::string_view token = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return token;
  }

  absl::Status ParseMetricName(std::string* name) {
    if (rest_.empty() || !IsMetricNameStart(rest_.front())) {
      return absl::InvalidArgumentError(
          "expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
    }
    size_t n = 1;
    while (n < rest_.size() && IsMetricNameChar(rest_[n])) ++n;
    name->assign(rest_.data(), n);
    rest_.remove_prefix(n);
    if (!rest_.empty() && !IsBlank(rest_.front()) && rest_.front() != '{') {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected character '", absl::CHexEscape(rest_.substr(0, 1)),
          "' in metric name \"", *name, "\""));
    }
    return absl::OkStatus();
  }

  // Parses `name="value"` pairs up to and including the closing '}'.
  absl::Status ParseLabels(std::map<std::string, std::string>* labels) {
    while (true) {
      SkipBlanks();
      if (rest_.empty()) {
        return absl::InvalidArgumentError("label set is not closed with '}'");
      }
      if (rest_.front() == '}') {
        rest_.remove_prefix(1);
        return absl::OkStatus();
      }
      std::string name;
      std::string value;
      absl::Status status = ParseLabel(&name, &value);
      if (!status.ok()) return status;
      if (!labels->emplace(name, std::move(value)).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("label \"", name, "\" appears twice"));
      }
      SkipBlanks();
      if (!rest_.empty() && rest_.front() == ',') {
        rest_.remove_prefix(1);
      } else if (rest_.empty() || rest_.front() != '}') {
        return absl::InvalidArgumentError(absl::StrCat(
            "expected ',' or '}' after the value of label \"", name, "\""));
      }
    }
  }

  absl::Status ParseLabel(std::string* name, std::string* value) {
    if (!IsLabelNameStart(rest_.front())) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected a label name ([a-zA-Z_][a-zA-Z0-9_]*), got '",
                       absl::CHexEscape(rest_.substr(0, 1)), "'"));
    }
    size_t n = 1;
    while (n < rest_.size() && IsLabelNameChar(rest_[n])) ++n;
    name->assign(rest_.data(), n);
    rest_.remove_prefix(n);
    SkipBlanks();
    if (rest_.empty() || rest_.front() != '=') {
      return absl::InvalidArgumentError(
          absl::StrCat("expected '=' after label name \"", *name, "\""));
    }
    rest_.remove_prefix(1);
    SkipBlanks();
    if (rest_.empty() || rest_.front() != '"') {
      return absl::InvalidArgumentError(absl::StrCat(
          "expected '\"' to open the value of label \"", *name, "\""));
    }
    rest_.remove_prefix(1);
    return ParseLabelValue(*name, value);
  }

  // Reads a quoted label value after its opening quote, through the closing
  // one, unescaping \\, \" and \n.
  absl::Status ParseLabelValue(const std::string& name, std::string* value) {
    while (!rest_.empty()) {
      const char c = rest_.front();
      rest_.remove_prefix(1);
      if (c == '"') return absl::OkStatus();
      if (c != '\\') {
        value->push_back(c);
        continue;
      }
      if (rest_.empty()) break;
      const char escaped = rest_.front();
      rest_.remove_prefix(1);
      if (escaped == '\\' || escaped == '"') {
        value->push_back(escaped);
      } else if (escaped == 'n') {
        value->push_back('\n');
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid escape '\\",
                         absl::CHexEscape(absl::string_view(&escaped, 1)),
                         "' in the value of label \"", name, "\""));
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("the value of label \"", name, "\" is not closed"));
  }

  absl::string_view rest_;
};

// Whether `line` is blank or a comment.
bool IsBlankOrComment(absl::string_view line) {
  for (char c : line) {
    if (IsBlank(c)) continue;
    return c == '#';
  }
  return true;
}

}  // namespace

const std::string* PrometheusSample::FindLabel(
    absl::string_view label_name) const {
  const auto it = labels.find(std::string(label_name));
  return it == labels.end() ? nullptr : &it->second;
}

absl::StatusOr<std::vector<PrometheusSample>> ParsePrometheusText(
    absl::string_view page, const PrometheusTextOptions& options) {
  if (page.size() > options.max_page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("page is ", page.size(),
                                                   " bytes, over the limit of ",
                                                   options.max_page_bytes));
  }
  std::vector<PrometheusSample> samples;
  size_t line_number = 0;
  while (!page.empty()) {
    ++line_number;
    const size_t end = page.find('\n');
    absl::string_view line = page.substr(0, end);
    page.remove_prefix(end == absl::string_view::npos ? page.size() : end + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > options.max_line_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": ", line.size(),
                       " bytes, over the limit of ", options.max_line_bytes));
    }
    if (IsBlankOrComment(line)) continue;
    PrometheusSample sample;
    const absl::Status status = LineParser(line).Parse(&sample);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": ", status.message()));
    }
    samples.push_back(std::move(sample));
  }
  return samples;
}

}  // namespace kvgate
